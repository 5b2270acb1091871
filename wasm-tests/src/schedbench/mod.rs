//! Scheduling quality: the same workload through the real Envoy, once per strategy, against
//! simulated vLLM pods (`crate::sim`), with every latency read in simulated seconds.
//!
//! One run = fresh pods + a fresh Envoy + one workload + one strategy:
//! - `round-robin`: Envoy without the plugin, a STATIC round-robin cluster over the pods (what a
//!   Kubernetes Service gives);
//! - `RANDOM`, `LEAST_REQUEST`, `DEFAULT`, `PREFIX_CACHE`: the plugin with that strategy (the
//!   metrics-based two with the collector service scraping every pod);
//! - `oracle`: Envoy without the plugin; the load generator itself picks the pod with perfect,
//!   instant knowledge of every engine ([`oracle`]) and sets the destination header.
//!
//! Requests are non-streaming `POST /v1/completions`; the pod's reply carries the request's own
//! simulated timeline (`x-sim-ttft-s`, `x-sim-e2e-s`, ...), so latencies are free of the host's
//! scheduling noise, which the time scale would magnify. Throughput is output tokens over the
//! run's wall time divided by the time scale.

pub mod oracle;
pub mod workload;

use crate::envoy::{Envoy, EnvoySpec, DESTINATION_HEADER};
use crate::sim::{start_sims, Sim, SimConfig};
use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use workload::{Arrivals, Workload};

pub const POOL: &str = "bench-pool";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    RoundRobin,
    Random,
    LeastRequest,
    Default,
    PrefixCache,
    Oracle,
    /// `DEFAULT` with `flowControl` on (the overload workload's second arm).
    DefaultFlowControl,
}

impl Strategy {
    pub const ALL: [Strategy; 6] = [
        Strategy::RoundRobin,
        Strategy::Random,
        Strategy::LeastRequest,
        Strategy::Default,
        Strategy::PrefixCache,
        Strategy::Oracle,
    ];

    pub fn key(self) -> &'static str {
        match self {
            Strategy::RoundRobin => "round-robin",
            Strategy::Random => "RANDOM",
            Strategy::LeastRequest => "LEAST_REQUEST",
            Strategy::Default => "DEFAULT",
            Strategy::PrefixCache => "PREFIX_CACHE",
            Strategy::Oracle => "oracle",
            Strategy::DefaultFlowControl => "DEFAULT+flowControl",
        }
    }

    pub fn parse(s: &str) -> Result<Strategy> {
        Strategy::ALL
            .into_iter()
            .chain([Strategy::DefaultFlowControl])
            .find(|k| k.key().eq_ignore_ascii_case(s))
            .ok_or_else(|| anyhow!("unknown strategy {s:?}"))
    }

    /// The plugin's `scheduling.strategy`, for the strategies the plugin runs.
    fn plugin_strategy(self) -> Option<&'static str> {
        match self {
            Strategy::RoundRobin | Strategy::Oracle => None,
            Strategy::DefaultFlowControl => Some("DEFAULT"),
            other => Some(other.key()),
        }
    }
}

/// What every run shares.
#[derive(Debug, Clone)]
pub struct Setup {
    pub sim: SimConfig,
    pub pods: usize,
    /// The collector's `metrics.intervalMs` (wall milliseconds).
    pub scrape_interval_ms: u64,
    /// How often the KV-cache use of every pod is sampled (simulated seconds).
    pub sample_every_s: f64,
    /// Extra `scheduling` fields for the plugin (e.g. `{"scorers": {...}}`), for experiments.
    pub scheduling_extra: Option<Value>,
    /// `flowControl` for the `DEFAULT+flowControl` arm.
    pub flow_control: Value,
}

impl Setup {
    /// The plugin's configuration: one pool of `endpoints`, every adapter and the base model
    /// served by name (the load generator draws the adapter, so that strategies without the
    /// plugin see the same demand).
    pub fn plugin_config(&self, endpoints: &[String], strategy: &str) -> Value {
        let mut models: Vec<Value> = self
            .sim
            .adapters
            .iter()
            .map(|a| json!({"modelName": a, "poolRef": POOL}))
            .collect();
        models.push(json!({"modelName": self.sim.base_model, "poolRef": POOL}));
        // The overload workload's served names, one per criticality, all on one adapter: the
        // classes compete for the same pods and the same engine queues, as tenants of one model do.
        let adapter = self.sim.adapters.first().map_or("", String::as_str);
        for ((_, name), criticality) in
            workload::OVERLOAD_MODELS
                .iter()
                .zip(["Critical", "Standard", "Sheddable"])
        {
            models.push(
                json!({"modelName": name, "poolRef": POOL, "criticality": criticality,
                               "targetModels": [{"name": adapter, "weight": 1}]}),
            );
        }
        let mut scheduling = json!({"strategy": strategy});
        if let Some(Value::Object(extra)) = &self.scheduling_extra {
            for (k, v) in extra {
                scheduling[k] = v.clone();
            }
        }
        json!({
            "pools": [{
                "name": POOL,
                "endpoints": endpoints,
                "engine": "vllm",
                "metrics": {"intervalMs": self.scrape_interval_ms, "timeoutMs": 1000, "stalenessMs": 2000},
            }],
            "models": models,
            "defaultPool": POOL,
            "unknownModels": "reject",
            "scheduling": scheduling,
        })
    }
}

/// One request's outcome, times in simulated seconds.
#[derive(Debug, Clone, Default)]
struct Outcome {
    class: &'static str,
    tenant: Option<&'static str>,
    /// From sending to the whole reply, at the client (simulated seconds: wall ÷ time scale).
    client_s: f64,
    status: u16,
    pod: usize,
    ttft_s: f64,
    e2e_s: f64,
    queue_s: f64,
    cached_tokens: f64,
    prompt_tokens: u32,
    output_tokens: u32,
}

fn header_f64(r: &reqwest::Response, name: &str) -> f64 {
    r.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN)
}

/// Everything one run needs while requests are in flight.
struct Live {
    http: reqwest::Client,
    url: String,
    sims: Vec<Sim>,
    pods: Vec<String>,
    oracle: Option<Mutex<oracle::Oracle>>,
    outcomes: Mutex<Vec<Outcome>>,
    /// Wall time since the start at which the last request was sent.
    last_send: Mutex<Option<Duration>>,
    start: Instant,
    time_scale: f64,
}

impl Live {
    async fn send(&self, req: &workload::Request) {
        let body = json!({"model": req.model, "prompt": req.prompt, "max_tokens": req.max_tokens})
            .to_string();
        let mut builder = self
            .http
            .post(&self.url)
            .header("content-type", "application/json");
        if let Some(tenant) = req.tenant {
            builder = builder.header("x-gateway-inference-fairness-id", tenant);
        }
        let mut picked = None;
        if let (Some(oracle), Some(first)) = (&self.oracle, self.sims.first()) {
            let key = first.request_key(&req.model, &req.prompt);
            let i = match oracle.lock() {
                Ok(mut o) => o.pick(&self.sims, &key, req.max_tokens),
                Err(poisoned) => poisoned.into_inner().pick(&self.sims, &key, req.max_tokens),
            };
            picked = Some(i);
            if let Some(pod) = self.pods.get(i) {
                builder = builder.header(DESTINATION_HEADER, pod);
            }
        }
        let mut out = Outcome {
            class: req.class,
            tenant: req.tenant,
            prompt_tokens: u32::try_from(req.prompt.len().div_ceil(4)).unwrap_or(u32::MAX),
            pod: picked.unwrap_or(usize::MAX),
            ..Outcome::default()
        };
        if let Ok(mut t) = self.last_send.lock() {
            *t = Some(self.start.elapsed());
        }
        let sent = Instant::now();
        match builder.body(body).send().await {
            Ok(r) => {
                out.status = r.status().as_u16();
                out.ttft_s = header_f64(&r, "x-sim-ttft-s");
                out.e2e_s = header_f64(&r, "x-sim-e2e-s");
                out.queue_s = header_f64(&r, "x-sim-queue-s");
                out.cached_tokens = header_f64(&r, "x-sim-cached-tokens");
                if let Some(pod) = r.headers().get("x-pod").and_then(|v| v.to_str().ok()) {
                    out.pod = self
                        .pods
                        .iter()
                        .position(|p| p == pod)
                        .unwrap_or(usize::MAX);
                }
                // The whole reply must arrive: the pod's timeline is in the headers, but the
                // request is only done for the client when the body is in.
                if r.bytes().await.is_err() {
                    out.status = 0;
                }
                out.client_s = sent.elapsed().as_secs_f64() / self.time_scale;
                if out.status == 200 {
                    out.output_tokens = req.max_tokens;
                }
            }
            Err(e) => {
                eprintln!("sched-bench: request failed: {e}");
            }
        }
        match self.outcomes.lock() {
            Ok(mut o) => o.push(out),
            Err(poisoned) => poisoned.into_inner().push(out),
        }
    }
}

/// Wait until the collector has scraped every pod once (its `endpoint_up` gauges are 1).
async fn wait_for_collector(envoy: &Envoy, pods: usize) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let stats = envoy
            .admin_get("/stats?filter=inference_router_endpoint_up")
            .await?;
        let up = stats.lines().filter(|l| l.ends_with(": 1")).count();
        if up >= pods {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the collector reported {up} of {pods} pods up after 30 s:\n{stats}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn percentiles(mut xs: Vec<f64>) -> Value {
    xs.retain(|x| x.is_finite());
    if xs.is_empty() {
        return json!(null);
    }
    xs.sort_by(f64::total_cmp);
    let at = |q: f64| {
        let i = ((xs.len() as f64 - 1.0) * q).round() as usize;
        xs.get(i).copied().unwrap_or(f64::NAN)
    };
    let mean = xs.iter().sum::<f64>() / xs.len() as f64;
    json!({"p50": at(0.5), "p90": at(0.9), "p99": at(0.99), "mean": mean, "max": at(1.0)})
}

/// Output tokens and completed requests per simulated second while the load was fully applied:
/// from a quarter of the sending period (past the start-up burst) to the last request sent (before
/// the drain, when fewer requests remain than the concurrency).
fn sustained(series: &[Value], last_send_s: f64) -> (f64, f64) {
    let at = |t: f64| {
        series
            .iter()
            .min_by(|a, b| {
                let da = (a["t"].as_f64().unwrap_or(0.0) - t).abs();
                let db = (b["t"].as_f64().unwrap_or(0.0) - t).abs();
                da.total_cmp(&db)
            })
            .map(|s| {
                (
                    s["t"].as_f64().unwrap_or(0.0),
                    s["generated"].as_f64().unwrap_or(0.0),
                    s["completed"].as_f64().unwrap_or(0.0),
                )
            })
    };
    match (at(last_send_s * 0.25), at(last_send_s)) {
        (Some((t0, g0, c0)), Some((t1, g1, c1))) if t1 > t0 => {
            ((g1 - g0) / (t1 - t0), (c1 - c0) / (t1 - t0))
        }
        _ => (f64::NAN, f64::NAN),
    }
}

/// Per priority class (workloads that have them): replies by status, TTFT as the client sees it
/// (the pod's TTFT plus the time the request spent before the pod: in the gateway's queue, in
/// Envoy, on the wire — the client's whole wait minus the pod's end-to-end time), output tokens of
/// the served ones per second, and the served requests per tenant.
fn by_class(outcomes: &[Outcome], duration_s: f64) -> Value {
    let mut classes = serde_json::Map::new();
    let mut names: Vec<&'static str> = outcomes.iter().map(|o| o.class).collect();
    names.sort_unstable();
    names.dedup();
    for class in names.into_iter().filter(|c| !c.is_empty()) {
        let of: Vec<&Outcome> = outcomes.iter().filter(|o| o.class == class).collect();
        let ok: Vec<&&Outcome> = of.iter().filter(|o| o.status == 200).collect();
        let mut statuses = std::collections::BTreeMap::new();
        for o in &of {
            *statuses.entry(o.status.to_string()).or_insert(0u64) += 1;
        }
        let mut tenants = std::collections::BTreeMap::new();
        for o in &ok {
            if let Some(t) = o.tenant {
                *tenants.entry(t.to_string()).or_insert(0u64) += 1;
            }
        }
        let mut sent = std::collections::BTreeMap::new();
        for o in &of {
            if let Some(t) = o.tenant {
                *sent.entry(t.to_string()).or_insert(0u64) += 1;
            }
        }
        let client_ttft = |o: &Outcome| o.ttft_s + (o.client_s - o.e2e_s).max(0.0);
        let mut tenant_ttft = serde_json::Map::new();
        for t in sent.keys() {
            let xs = ok
                .iter()
                .filter(|o| o.tenant == Some(t.as_str()))
                .map(|o| client_ttft(o))
                .collect();
            tenant_ttft.insert(t.clone(), percentiles(xs));
        }
        let client_ttft: Vec<f64> = ok.iter().map(|o| client_ttft(o)).collect();
        let tokens: u64 = ok.iter().map(|o| u64::from(o.output_tokens)).sum();
        classes.insert(
            class.to_string(),
            json!({
                "requests": of.len(),
                "ok": ok.len(),
                "statuses": statuses,
                "ttft_client_s": percentiles(client_ttft),
                "ttft_pod_s": percentiles(ok.iter().map(|o| o.ttft_s).collect()),
                "output_tokens_per_s": tokens as f64 / duration_s,
                "tenants_sent": sent,
                "tenants_served": tenants,
                "tenants_ttft_client_s": tenant_ttft,
            }),
        );
    }
    Value::Object(classes)
}

/// Run `workload` with `strategy`; the result as JSON (see `bench.py report`).
pub async fn run(setup: &Setup, workload: &Workload, strategy: Strategy) -> Result<Value> {
    let scale = setup.sim.time_scale;
    let sims = start_sims(setup.pods, &setup.sim).await?;
    let pods: Vec<String> = sims.iter().map(Sim::endpoint).collect();
    let spec = match strategy.plugin_strategy() {
        Some(s) => {
            let mut config = setup.plugin_config(&pods, s);
            if strategy == Strategy::DefaultFlowControl {
                config["flowControl"] = setup.flow_control.clone();
            }
            EnvoySpec::plugin(&config)
        }
        None => EnvoySpec::without_plugin(
            pods.iter()
                .map(|p| p.parse())
                .collect::<Result<Vec<_>, _>>()?,
        ),
    };
    let envoy = Envoy::start(&spec).await.context("starting Envoy")?;
    if matches!(
        strategy,
        Strategy::Default | Strategy::PrefixCache | Strategy::DefaultFlowControl
    ) {
        wait_for_collector(&envoy, pods.len()).await?;
    }
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(900))
        .build()?;
    let live = Arc::new(Live {
        http,
        url: format!("http://{}/v1/completions", envoy.addr()?),
        oracle: (strategy == Strategy::Oracle)
            .then(|| Mutex::new(oracle::Oracle::new(&setup.sim, sims.len()))),
        sims,
        pods,
        outcomes: Mutex::new(Vec::new()),
        last_send: Mutex::new(None),
        start: Instant::now(),
        time_scale: scale,
    });
    let requests = Arc::new(workload.requests.clone());

    // KV-cache use per pod over time, sampled from the engines directly.
    let sampling = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let (live, sampling) = (Arc::clone(&live), Arc::clone(&sampling));
        let every = Duration::from_secs_f64((setup.sample_every_s * scale).max(0.005));
        tokio::spawn(async move {
            let start = Instant::now();
            let mut series: Vec<Value> = Vec::new();
            while sampling.load(Ordering::Relaxed) {
                let t = start.elapsed().as_secs_f64() / scale;
                let mut kv = Vec::with_capacity(live.sims.len());
                let mut queued = Vec::with_capacity(live.sims.len());
                let (mut generated, mut done) = (0u64, 0u64);
                for s in &live.sims {
                    let st = s.stats().await;
                    kv.push((st.kv_cache_usage * 1000.0).round() / 1000.0);
                    queued.push(st.waiting);
                    generated += st.generation_tokens;
                    done += st.completed;
                }
                series.push(
                    json!({"t": (t * 100.0).round() / 100.0, "kv": kv, "waiting": queued,
                                   "generated": generated, "completed": done}),
                );
                tokio::time::sleep(every).await;
            }
            series
        })
    };

    let start = live.start;
    match workload.arrivals {
        Arrivals::Closed { concurrency } => {
            let next = Arc::new(AtomicUsize::new(0));
            let mut workers = Vec::new();
            for _ in 0..concurrency {
                let (live, requests, next) =
                    (Arc::clone(&live), Arc::clone(&requests), Arc::clone(&next));
                workers.push(tokio::spawn(async move {
                    while let Some(req) = requests.get(next.fetch_add(1, Ordering::Relaxed)) {
                        live.send(req).await;
                    }
                }));
            }
            for w in workers {
                w.await?;
            }
        }
        Arrivals::Open { .. } => {
            let mut tasks = Vec::new();
            for i in 0..requests.len() {
                let at = requests.get(i).map_or(0.0, |r| r.at_s);
                tokio::time::sleep_until((start + Duration::from_secs_f64(at * scale)).into())
                    .await;
                let (live, requests) = (Arc::clone(&live), Arc::clone(&requests));
                tasks.push(tokio::spawn(async move {
                    if let Some(req) = requests.get(i) {
                        live.send(req).await;
                    }
                }));
            }
            for t in tasks {
                t.await?;
            }
        }
    }
    let wall = start.elapsed().as_secs_f64();
    sampling.store(false, Ordering::Relaxed);
    let series = sampler.await?;

    let mut stats = Vec::new();
    for s in &live.sims {
        stats.push(s.stats().await);
    }
    let outcomes = match live.outcomes.lock() {
        Ok(o) => o.clone(),
        Err(poisoned) => poisoned.into_inner().clone(),
    };
    drop(envoy);
    let ok: Vec<&Outcome> = outcomes.iter().filter(|o| o.status == 200).collect();
    let errors = outcomes.len() - ok.len();
    let duration_s = wall / scale;
    let last_send_s = match live.last_send.lock() {
        Ok(t) => t.map_or(0.0, |d| d.as_secs_f64()),
        Err(_) => 0.0,
    } / scale;
    let (sustained_tokens, sustained_requests) = sustained(&series, last_send_s);
    let output_tokens: u64 = ok.iter().map(|o| u64::from(o.output_tokens)).sum();
    let mut per_pod = vec![0u64; live.pods.len()];
    for o in &ok {
        if let Some(n) = per_pod.get_mut(o.pod) {
            *n += 1;
        }
    }
    let itl: Vec<f64> = ok
        .iter()
        .filter(|o| o.output_tokens > 1)
        .map(|o| (o.e2e_s - o.ttft_s) / f64::from(o.output_tokens - 1))
        .collect();
    let queries: u64 = stats.iter().map(|s| s.prefix_cache_queries).sum();
    let hits: u64 = stats.iter().map(|s| s.prefix_cache_hits).sum();
    let prompt_tokens: u64 = ok.iter().map(|o| u64::from(o.prompt_tokens)).sum();
    let cached: f64 = ok
        .iter()
        .map(|o| o.cached_tokens)
        .filter(|c| c.is_finite())
        .sum();
    let mut statuses = std::collections::BTreeMap::new();
    for o in &outcomes {
        *statuses.entry(o.status.to_string()).or_insert(0u64) += 1;
    }
    let by_class = by_class(&outcomes, duration_s);
    Ok(json!({
        "by_class": by_class,
        "workload": workload.key,
        "strategy": strategy.key(),
        "requests": outcomes.len(),
        "ok": ok.len(),
        "errors": errors,
        "statuses": statuses,
        "wall_s": wall,
        "duration_s": duration_s,
        "requests_per_s": ok.len() as f64 / duration_s,
        "output_tokens_per_s": output_tokens as f64 / duration_s,
        "last_send_s": last_send_s,
        "sustained_output_tokens_per_s": sustained_tokens,
        "sustained_requests_per_s": sustained_requests,
        "ttft_s": percentiles(ok.iter().map(|o| o.ttft_s).collect()),
        "e2e_s": percentiles(ok.iter().map(|o| o.e2e_s).collect()),
        "itl_s": percentiles(itl),
        "queue_s": percentiles(ok.iter().map(|o| o.queue_s).collect()),
        // vLLM's own counter (hits / lookups over every admission, preemptions included) and
        // the share of prompt tokens served from the cache at first admission.
        "prefix_hit_rate": if queries > 0 { hits as f64 / queries as f64 } else { 0.0 },
        "prompt_cached_share": if prompt_tokens > 0 { cached / prompt_tokens as f64 } else { 0.0 },
        "adapter_loads": stats.iter().map(|s| s.adapter_loads).sum::<u64>(),
        "preemptions": stats.iter().map(|s| s.preemptions).sum::<u64>(),
        "per_pod_requests": per_pod,
        "kv_series": series,
    }))
}
