//! Shared by `scheduling.rs` and `collector.rs`: simulated pods, the plugin configuration they
//! are tested with, reading Envoy's `/stats/prometheus` and `/clusters`, and readiness checks that
//! poll those (with a deadline) instead of sleeping.

// Each test crate uses its own subset of these helpers.
#![allow(dead_code)]

use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use wasm_tests::client::{Client, Reply};
use wasm_tests::envoy::{Envoy, EnvoySpec};
use wasm_tests::sim::{endpoints, start_sims, Pin, Sim, SimConfig};
use wasm_tests::PROMPT;

pub const POOL: &str = "pool-a";
/// The collector's scrape interval in these tests (the documented default).
pub const INTERVAL_MS: u64 = 100;

pub const QUEUE_SIZE: &str = "inference_router_endpoint_queue_size";
pub const RUNNING: &str = "inference_router_endpoint_running_requests";
pub const KV_PERMILLE: &str = "inference_router_endpoint_kv_cache_usage_permille";
pub const UP: &str = "inference_router_endpoint_up";
pub const SCRAPE_ERRORS: &str = "inference_router_endpoint_scrape_errors_total";
pub const PICKS: &str = "inference_router_endpoint_picks_total";
pub const REQUESTS: &str = "inference_router_requests_total";

/// Served models. `tiny-llama` is the simulator's base model; the others map to its adapters.
pub const BASE: &str = "tiny-llama";
pub const CRITICAL: &str = "critical-chat";
pub const STANDARD: &str = "standard-chat";
pub const SHEDDABLE: &str = "sheddable-batch";
/// A model with a single target: the `sql-lora` adapter.
pub const SQL: &str = "sql-assistant";
pub const SQL_ADAPTER: &str = "sql-lora";

/// A simulated pod ten times faster than a real GPU: a short completion takes a few ms.
pub fn fast_sim() -> SimConfig {
    SimConfig {
        time_scale: 0.1,
        ..SimConfig::default()
    }
}

/// A simulated pod at real speed: a completion of 64 tokens takes about a second, long enough for
/// a burst of requests to be in flight together.
pub fn slow_sim() -> SimConfig {
    SimConfig {
        time_scale: 1.0,
        ..SimConfig::default()
    }
}

pub async fn sims(n: usize, config: &SimConfig) -> Vec<Sim> {
    start_sims(n, config).await.unwrap()
}

/// The plugin configuration for one pool of `endpoints` under `strategy`.
pub fn config(endpoints: &[String], strategy: &str) -> Value {
    json!({
        "pools": [{
            "name": POOL,
            "endpoints": endpoints,
            "metrics": {"intervalMs": INTERVAL_MS},
        }],
        "models": [
            {"modelName": BASE, "poolRef": POOL},
            {"modelName": CRITICAL, "poolRef": POOL, "criticality": "Critical",
             "targetModels": [{"name": "tweet-summary", "weight": 1}]},
            {"modelName": STANDARD, "poolRef": POOL, "criticality": "Standard",
             "targetModels": [{"name": "tweet-summary", "weight": 1}]},
            {"modelName": SHEDDABLE, "poolRef": POOL, "criticality": "Sheddable",
             "targetModels": [{"name": "travel-helper", "weight": 1}]},
            {"modelName": SQL, "poolRef": POOL,
             "targetModels": [{"name": SQL_ADAPTER, "weight": 1}]},
        ],
        "defaultPool": POOL,
        "unknownModels": "reject",
        "scheduling": {"strategy": strategy},
    })
}

/// Set `pools[0].metrics.<key>`.
pub fn set_metrics(config: &mut Value, key: &str, value: Value) {
    config["pools"][0]["metrics"][key] = value;
}

pub async fn start_envoy(config: &Value) -> Envoy {
    Envoy::start(&EnvoySpec::plugin(config)).await.unwrap()
}

/// A pin with only queue and KV set.
pub fn load(waiting: u64, kv: f64) -> Pin {
    Pin {
        waiting: Some(waiting),
        kv: Some(kv),
        ..Pin::default()
    }
}

pub fn completion_body(model: &str, prompt: &str, max_tokens: u32) -> String {
    json!({"model": model, "prompt": prompt, "max_tokens": max_tokens}).to_string()
}

pub async fn complete(client: &Client, model: &str) -> Reply {
    client
        .post("/v1/completions", completion_body(model, "Say hi", 3), &[])
        .await
        .unwrap()
}

/// `n` requests one after another; each must succeed. Returns the pod that answered each.
pub async fn sequential(client: &Client, model: &str, n: usize) -> Vec<String> {
    let mut pods = Vec::with_capacity(n);
    for i in 0..n {
        let r = complete(client, model).await;
        assert_eq!(r.status, 200, "request {i} for {model}: {}", r.text());
        pods.push(r.pod().expect("the reply names its pod").to_string());
    }
    pods
}

/// How many of `pods` are each of `endpoints` (pods outside the list are a test failure).
pub fn tally(endpoints: &[String], pods: &[String]) -> Vec<usize> {
    for p in pods {
        assert!(endpoints.contains(p), "{p} is not one of {endpoints:?}");
    }
    endpoints
        .iter()
        .map(|e| pods.iter().filter(|p| *p == e).count())
        .collect()
}

// ---- Envoy's /stats/prometheus -------------------------------------------------------------

#[derive(Debug, Clone)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// The samples of a Prometheus text page (comments skipped).
pub fn parse_prometheus(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(parse_sample)
        .collect()
}

fn parse_sample(line: &str) -> Option<Sample> {
    let (series, value) = line.rsplit_once(' ')?;
    let value: f64 = value.parse().ok()?;
    let (name, labels) = match series.split_once('{') {
        None => (series.to_string(), BTreeMap::new()),
        Some((name, rest)) => (name.to_string(), parse_labels(rest.strip_suffix('}')?)?),
    };
    Some(Sample {
        name,
        labels,
        value,
    })
}

fn parse_labels(mut s: &str) -> Option<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    while !s.is_empty() {
        let (key, rest) = s.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, e)) = chars.next() {
                        value.push(if e == 'n' { '\n' } else { e });
                    }
                }
                '"' => {
                    end = Some(i);
                    break;
                }
                c => value.push(c),
            }
        }
        let end = end?;
        out.insert(key.trim_start_matches(',').to_string(), value);
        s = rest[end + 1..].trim_start_matches(',');
    }
    Some(out)
}

pub async fn prometheus(envoy: &Envoy) -> Vec<Sample> {
    parse_prometheus(&envoy.admin_get("/stats/prometheus").await.unwrap())
}

/// Poll the per-endpoint gauges every 25 ms while `work` runs; returns its output and a
/// timeline (one line per poll) to print when the outcome is not what was expected.
pub async fn with_gauge_timeline<T>(
    envoy: &Envoy,
    endpoints: &[String],
    work: impl std::future::Future<Output = T>,
) -> (T, String) {
    let admin = envoy.admin();
    let eps = endpoints.to_vec();
    let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
    let monitor = tokio::spawn(async move {
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        let start = Instant::now();
        let mut lines = Vec::new();
        loop {
            let page = http
                .get(format!("http://{admin}/stats/prometheus"))
                .send()
                .await;
            if let Ok(page) = page {
                let samples = parse_prometheus(&page.text().await.unwrap_or_default());
                let mut line = format!("{:>5} ms", start.elapsed().as_millis());
                for (i, e) in eps.iter().enumerate() {
                    let l = [("pool", POOL), ("endpoint", e.as_str())];
                    let v = |name| value(&samples, name, &l).unwrap_or(-1.0);
                    line.push_str(&format!(
                        " | {i}: up {} q {} run {} kv {} err {} picks {}",
                        v(UP),
                        v(QUEUE_SIZE),
                        v(RUNNING),
                        v(KV_PERMILLE),
                        v(SCRAPE_ERRORS),
                        v(PICKS)
                    ));
                }
                lines.push(line);
            }
            tokio::select! {
                _ = &mut stop_rx => break,
                _ = tokio::time::sleep(Duration::from_millis(25)) => {}
            }
        }
        lines.join("\n")
    });
    let out = work.await;
    let _ = stop_tx.send(());
    (out, monitor.await.unwrap_or_default())
}

fn matches(s: &Sample, name: &str, labels: &[(&str, &str)]) -> bool {
    s.name == name
        && labels
            .iter()
            .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
}

/// The value of the first series of `name` carrying `labels`.
pub fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| matches(s, name, labels))
        .map(|s| s.value)
}

/// The sum over every series of `name` carrying `labels` (0 when there is none).
pub fn sum(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| matches(s, name, labels))
        .map(|s| s.value)
        .sum()
}

/// The value of one endpoint's series of `name`, now.
pub async fn endpoint_metric(envoy: &Envoy, name: &str, endpoint: &str) -> Option<f64> {
    value(
        &prometheus(envoy).await,
        name,
        &[("pool", POOL), ("endpoint", endpoint)],
    )
}

/// Poll `/stats/prometheus` every 10 ms until `ok` holds for one endpoint's series of `name`,
/// at most `timeout`. Returns the value and how long it took; fails with what was seen.
pub async fn wait_endpoint_metric(
    envoy: &Envoy,
    name: &str,
    endpoint: &str,
    what: &str,
    ok: impl Fn(f64) -> bool,
    timeout: Duration,
) -> (f64, Duration) {
    let start = Instant::now();
    loop {
        let v = endpoint_metric(envoy, name, endpoint).await;
        if let Some(v) = v.filter(|v| ok(*v)) {
            return (v, start.elapsed());
        }
        assert!(
            start.elapsed() < timeout,
            "{name}{{endpoint={endpoint}}} is {v:?} after {timeout:?}, expected {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Wait (at most [`PROMPT`]) until each endpoint's gauge `name` equals `expected[i]`.
pub async fn wait_gauges(envoy: &Envoy, name: &str, endpoints: &[String], expected: &[f64]) {
    for (e, want) in endpoints.iter().zip(expected) {
        wait_endpoint_metric(envoy, name, e, &format!("{want}"), |v| v == *want, PROMPT).await;
    }
}

/// Every endpoint has been scraped successfully (`up` = 1).
pub async fn wait_all_up(envoy: &Envoy, endpoints: &[String]) {
    wait_gauges(envoy, UP, endpoints, &vec![1.0; endpoints.len()]).await;
}

/// The collector records an endpoint's gauges as each scrape ends and publishes the pool's
/// snapshot once the scrapes started in the same round are all back (or on its next tick, a
/// quarter interval later): two intervals after a gauge shows a value, the filters have it too.
pub async fn settle() {
    tokio::time::sleep(Duration::from_millis(2 * INTERVAL_MS)).await;
}

/// `inference_router_requests_total` for `model` with `outcome`, summed over target models.
pub async fn requests_total(envoy: &Envoy, model: &str, outcome: &str) -> f64 {
    sum(
        &prometheus(envoy).await,
        REQUESTS,
        &[("pool", POOL), ("model", model), ("outcome", outcome)],
    )
}

// ---- Envoy's /clusters ---------------------------------------------------------------------

/// Requests Envoy sent to `endpoint` through `cluster` (per-host `rq_total` of admin `/clusters`).
/// With no inference traffic, these are the collector's scrapes.
pub async fn upstream_requests(envoy: &Envoy, cluster: &str, endpoint: &str) -> u64 {
    let text = envoy.admin_get("/clusters").await.unwrap();
    let key = format!("{cluster}::{endpoint}::rq_total::");
    text.lines()
        .find_map(|l| l.strip_prefix(&key))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

// ---- Scenarios shared by both test files -----------------------------------------------------

/// Four equal pods but one reporting 50 waiting requests: once the gauge shows the 50, none of 40
/// sequential requests goes to that pod. `collector`: the `collector` object of the
/// configuration, or None to leave it out (the default, service mode).
pub async fn long_queue_is_avoided(collector: Option<Value>) {
    let sims = sims(4, &fast_sim()).await;
    let eps = endpoints(&sims);
    let busy = &eps[0];
    sims[0].pin(load(50, 0.0)).await;
    let mut config = config(&eps, "DEFAULT");
    if let Some(c) = collector {
        config["collector"] = c;
    }
    let envoy = start_envoy(&config).await;
    wait_all_up(&envoy, &eps).await;
    wait_gauges(&envoy, QUEUE_SIZE, &eps, &[50.0, 0.0, 0.0, 0.0]).await;
    settle().await;

    let client = envoy.client().unwrap();
    let pods = sequential(&client, BASE, 40).await;
    let counts = tally(&eps, &pods);
    assert_eq!(
        counts[0], 0,
        "{busy} reports 50 waiting requests, the others none, yet it got {} of 40: {counts:?}",
        counts[0]
    );
    let picks = sum(
        &prometheus(&envoy).await,
        PICKS,
        &[("pool", POOL), ("endpoint", busy)],
    );
    assert_eq!(picks, 0.0, "picks_total of {busy}");
}

// ---- One keep-alive connection -----------------------------------------------------------------

/// An HTTP/1.1 client on exactly one connection, so every request is handled by the same Envoy
/// worker. (The pooled client may open a second connection when a request follows a response
/// before the first connection is back in its pool, and Envoy may give that one to another
/// worker.)
pub struct KeepAlive {
    conn: BufReader<TcpStream>,
    host: String,
}

/// Status, lower-cased headers and body of one response.
pub struct RawReply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawReply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

impl KeepAlive {
    pub async fn connect(addr: SocketAddr) -> KeepAlive {
        let stream = TcpStream::connect(addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        KeepAlive {
            conn: BufReader::new(stream),
            host: addr.to_string(),
        }
    }

    pub async fn post(&mut self, path: &str, body: &str) -> RawReply {
        let head = format!(
            "POST {path} HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\n\
             content-length: {}\r\n\r\n",
            self.host,
            body.len()
        );
        let stream = self.conn.get_mut();
        stream.write_all(head.as_bytes()).await.unwrap();
        stream.write_all(body.as_bytes()).await.unwrap();
        tokio::time::timeout(PROMPT, self.read_response())
            .await
            .expect("a response within PROMPT")
    }

    async fn line(&mut self) -> String {
        let mut line = String::new();
        let n = self.conn.read_line(&mut line).await.unwrap();
        assert!(n > 0, "connection closed before the response ended");
        line.trim_end_matches(['\r', '\n']).to_string()
    }

    async fn read_response(&mut self) -> RawReply {
        let status_line = self.line().await;
        let status: u16 = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
        let mut headers = Vec::new();
        loop {
            let line = self.line().await;
            if line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
            }
        }
        let find = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        };
        let mut body = Vec::new();
        if let Some(len) = find("content-length") {
            body.resize(len.parse::<usize>().unwrap(), 0);
            self.conn.read_exact(&mut body).await.unwrap();
        } else if find("transfer-encoding").is_some_and(|t| t.contains("chunked")) {
            loop {
                let size_line = self.line().await;
                let size_hex = size_line.split(';').next().unwrap_or_default().trim();
                let size = usize::from_str_radix(size_hex, 16).unwrap();
                let mut chunk = vec![0; size];
                self.conn.read_exact(&mut chunk).await.unwrap();
                body.extend_from_slice(&chunk);
                self.line().await;
                if size == 0 {
                    break;
                }
            }
        }
        RawReply {
            status,
            headers,
            body,
        }
    }
}
