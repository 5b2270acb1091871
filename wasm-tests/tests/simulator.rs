//! The vLLM simulator on its own (no Envoy): `/metrics` conformance with the real vLLM 0.32
//! page, reply formats against the fixtures, and the engine behaviours a scheduler can exploit
//! (queueing, KV budget, LoRA slots, prefix cache), plus the admin knobs.

// Test helpers fail loudly: clippy.toml only exempts #[test] bodies themselves.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};
use wasm_tests::client::{Client, Reply};
use wasm_tests::pod::{Pod, PodOptions};
use wasm_tests::sim::{MetricsFail, Pin, Sim, SimConfig};
use wasm_tests::PROMPT;

// ---------------------------------------------------------------------------------------------
// Helpers

fn fixture(name: &str) -> String {
    std::fs::read_to_string(wasm_tests::fixtures_dir().join(name))
        .unwrap_or_else(|e| panic!("fixture {name}: {e}"))
}

/// The defaults, 20× faster than a GPU.
fn fast() -> SimConfig {
    SimConfig {
        time_scale: 0.05,
        ..SimConfig::default()
    }
}

async fn start(config: SimConfig) -> (Sim, Client) {
    let sim = Sim::start_next(config).await.unwrap();
    let client = Client::new(sim.addr()).unwrap();
    (sim, client)
}

async fn complete(client: &Client, body: Value) -> Reply {
    let r = client
        .post("/v1/completions", body.to_string(), &[])
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    r
}

fn header_f64(r: &Reply, name: &str) -> f64 {
    r.header(name)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no numeric {name} header"))
}

/// One sample: name, labels, value.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

#[derive(Debug, Default, Clone)]
struct Family {
    kind: String,
    help: String,
    samples: Vec<Sample>,
}

/// Families in page order (name, family). Samples belong to the family TYPE'd before them.
fn parse_page(text: &str) -> Vec<(String, Family)> {
    let mut families: Vec<(String, Family)> = Vec::new();
    let mut helps: BTreeMap<String, String> = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            helps.insert(name.to_string(), help.to_string());
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            let help = helps.get(name).cloned().unwrap_or_default();
            families.push((
                name.to_string(),
                Family {
                    kind: kind.to_string(),
                    help,
                    samples: Vec::new(),
                },
            ));
        } else if !line.is_empty() && !line.starts_with('#') {
            let sample = parse_sample(line);
            let (family, f) = families
                .last_mut()
                .unwrap_or_else(|| panic!("sample before any TYPE: {line}"));
            let ok = sample.name == *family
                || (matches!(f.kind.as_str(), "histogram" | "summary")
                    && ["_bucket", "_count", "_sum"]
                        .iter()
                        .any(|s| sample.name == format!("{family}{s}")));
            assert!(ok, "sample {} outside its family {family}", sample.name);
            f.samples.push(sample);
        }
    }
    families
}

fn parse_sample(line: &str) -> Sample {
    let (head, value) = line.rsplit_once(' ').unwrap();
    let value = match value {
        "+Inf" => f64::INFINITY,
        v => v.parse().unwrap_or_else(|_| panic!("bad value in {line}")),
    };
    let (name, mut rest) = match head.split_once('{') {
        Some((n, r)) => (n, r.strip_suffix('}').unwrap()),
        None => (head, ""),
    };
    let mut labels = BTreeMap::new();
    while !rest.is_empty() {
        let (key, after) = rest.split_once("=\"").unwrap();
        let mut val = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, n)) = chars.next() {
                        val.push(if n == 'n' { '\n' } else { n });
                    }
                }
                '"' => {
                    end = i;
                    break;
                }
                c => val.push(c),
            }
        }
        labels.insert(key.to_string(), val);
        rest = after[end + 1..].trim_start_matches(',');
    }
    Sample {
        name: name.to_string(),
        labels,
        value,
    }
}

fn family<'a>(page: &'a [(String, Family)], name: &str) -> &'a Family {
    page.iter()
        .find(|(n, _)| n == name)
        .map(|(_, f)| f)
        .unwrap_or_else(|| panic!("no family {name}"))
}

/// The value of the sample `name` whose labels include `labels`.
fn value(page: &[(String, Family)], name: &str, labels: &[(&str, &str)]) -> f64 {
    page.iter()
        .flat_map(|(_, f)| &f.samples)
        .find(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
        .unwrap_or_else(|| panic!("no sample {name} {labels:?}"))
}

async fn page(client: &Client) -> Vec<(String, Family)> {
    let r = client.get("/metrics", &[]).await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    parse_page(&r.text())
}

/// The `vllm:lora_requests_info` series, newest (current) first.
fn lora_series(page: &[(String, Family)]) -> Vec<(String, String, String, f64)> {
    let mut series: Vec<_> = family(page, "vllm:lora_requests_info")
        .samples
        .iter()
        .map(|s| {
            let l = |k: &str| s.labels.get(k).cloned().unwrap_or_default();
            (
                l("max_lora"),
                l("running_lora_adapters"),
                l("waiting_lora_adapters"),
                s.value,
            )
        })
        .collect();
    series.sort_by(|a, b| b.3.total_cmp(&a.3));
    series
}

/// Poll `/metrics` until `cond` holds (bounded by PROMPT).
async fn poll_page(
    client: &Client,
    what: &str,
    cond: impl Fn(&[(String, Family)]) -> bool,
) -> Vec<(String, Family)> {
    let deadline = Instant::now() + PROMPT;
    loop {
        let p = page(client).await;
        if cond(&p) {
            return p;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// A JSON text's shape: keys and structure kept, strings → "S", numbers → 0 (literals kept).
fn shape(json: &str) -> String {
    let b = json.as_bytes();
    let mut out = String::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'"' => {
                let start = i;
                i += 1;
                while b[i] != b'"' {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
                let is_key = b[i..].iter().find(|c| !c.is_ascii_whitespace()) == Some(&b':');
                if is_key {
                    out.push_str(&json[start..i]);
                } else {
                    out.push_str("\"S\"");
                }
            }
            b'-' | b'0'..=b'9' => {
                while i < b.len() && matches!(b[i], b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9')
                {
                    i += 1;
                }
                out.push('0');
            }
            c => {
                out.push(c as char);
                i += 1;
            }
        }
    }
    out
}

/// SSE text → the data of each event; asserts the `data: …\n\n` framing.
fn sse_events(text: &str) -> Vec<String> {
    assert!(text.ends_with("data: [DONE]\n\n"), "{text:?}");
    text.split_terminator("\n\n")
        .map(|e| {
            e.strip_prefix("data: ")
                .unwrap_or_else(|| panic!("event without `data: `: {e:?}"))
                .to_string()
        })
        .collect()
}

fn shapes(events: &[String]) -> Vec<String> {
    events.iter().map(|e| shape(e)).collect()
}

// ---------------------------------------------------------------------------------------------
// /metrics conformance

/// Families a scheduler or dashboard reads.
const REQUIRED: &[&str] = &[
    "vllm:num_requests_running",
    "vllm:num_requests_waiting",
    "vllm:kv_cache_usage_perc",
    "vllm:lora_requests_info",
    "vllm:cache_config_info",
    "vllm:prefix_cache_queries_total",
    "vllm:prefix_cache_hits_total",
    "vllm:prompt_tokens_total",
    "vllm:generation_tokens_total",
    "vllm:request_success_total",
    "vllm:time_to_first_token_seconds",
    "vllm:e2e_request_latency_seconds",
    "vllm:inter_token_latency_seconds",
    "vllm:request_queue_time_seconds",
];

/// The label-name sets of a family's samples, per sample name.
fn label_names(f: &Family) -> BTreeSet<(String, Vec<String>)> {
    f.samples
        .iter()
        .map(|s| (s.name.clone(), s.labels.keys().cloned().collect()))
        .collect()
}

fn series_set(f: &Family) -> BTreeSet<(String, Vec<(String, String)>)> {
    f.samples
        .iter()
        .map(|s| {
            (
                s.name.clone(),
                s.labels
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metric_families_conform_to_the_vllm_fixture() {
    // Sized like the fixture's server, so the token buckets (1-2-5 up to max_model_len) match.
    let (_sim, client) = start(SimConfig {
        max_model_len: 1024,
        block_size: 128,
        num_gpu_blocks: 4096,
        kv_bytes_per_token: 2048,
        ..fast()
    })
    .await;
    complete(
        &client,
        json!({"model": "sql-lora", "prompt": "a b c", "max_tokens": 3}),
    )
    .await;
    complete(
        &client,
        json!({"model": "tiny-llama", "prompt": "a b c", "max_tokens": 3}),
    )
    .await;

    let ours = page(&client).await;
    let real = parse_page(&fixture("metrics-under-load.txt"));
    let real_order: Vec<&str> = real.iter().map(|(n, _)| n.as_str()).collect();
    let mut last_pos = 0;
    for (name, f) in &ours {
        let (pos, (_, r)) = real
            .iter()
            .enumerate()
            .find(|(_, (n, _))| n == name)
            .unwrap_or_else(|| panic!("{name} is not a vLLM 0.32 family"));
        assert_eq!(f.kind, r.kind, "{name}: TYPE");
        assert_eq!(f.help, r.help, "{name}: HELP");
        assert!(
            pos >= last_pos,
            "{name} is out of vLLM's order {real_order:?}"
        );
        last_pos = pos;
        let (ours_labels, real_labels) = (label_names(f), label_names(r));
        assert!(
            ours_labels.is_subset(&real_labels),
            "{name}: label names {ours_labels:?} not among vLLM's {real_labels:?}"
        );
        match name.as_str() {
            "vllm:lora_requests_info" | "vllm:cache_config_info" => {}
            // Same series (reasons, sources, buckets …) exactly; the values are ours.
            _ => assert_eq!(series_set(f), series_set(r), "{name}: series"),
        }
    }
    for name in REQUIRED {
        assert!(ours.iter().any(|(n, _)| n == name), "missing {name}");
    }
    // Value conventions.
    let kv = value(&ours, "vllm:kv_cache_usage_perc", &[]);
    assert!((0.0..=1.0).contains(&kv), "kv usage is a fraction: {kv}");
    let cache = &family(&ours, "vllm:cache_config_info").samples[0];
    let real_cache = &family(&real, "vllm:cache_config_info").samples[0];
    assert_eq!(cache.value, 1.0);
    for key in [
        "block_size",
        "num_gpu_blocks",
        "kv_cache_size_tokens",
        "kv_cache_max_concurrency",
        "kv_cache_memory_bytes",
        "enable_prefix_caching",
    ] {
        assert_eq!(
            cache.labels.get(key),
            real_cache.labels.get(key),
            "cache_config_info {key}"
        );
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    for (_, _, _, ts) in lora_series(&ours) {
        assert!(
            (now - 120.0..now + 1.0).contains(&ts),
            "lora_requests_info holds Unix times: {ts}"
        );
    }
    assert_eq!(
        value(
            &ours,
            "vllm:request_success_total",
            &[("finished_reason", "length")]
        ),
        2.0
    );
    assert_eq!(value(&ours, "vllm:generation_tokens_total", &[]), 6.0);
    assert_eq!(
        value(&ours, "vllm:time_to_first_token_seconds_count", &[]),
        2.0
    );
    assert_eq!(
        value(&ours, "vllm:inter_token_latency_seconds_count", &[]),
        4.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lora_requests_info_keeps_one_series_per_adapter_set() {
    let (_sim, client) = start(fast()).await;
    // Like vLLM right after start: HELP/TYPE, no sample — also after base-model requests.
    let text = client.get("/metrics", &[]).await.unwrap().text();
    assert!(text.contains("# TYPE vllm:lora_requests_info gauge"));
    complete(
        &client,
        json!({"model": "tiny-llama", "prompt": "hi", "max_tokens": 2}),
    )
    .await;
    assert!(lora_series(&page(&client).await).is_empty());

    // A long sql-lora request: while it runs, the current series says so.
    let long = {
        let client = client.clone_for_test();
        tokio::spawn(async move {
            complete(
                &client,
                json!({"model": "sql-lora", "prompt": "hi", "max_tokens": 400}),
            )
            .await
        })
    };
    let running = poll_page(&client, "sql-lora running", |p| {
        lora_series(p)
            .first()
            .is_some_and(|s| s.1 == "sql-lora" && s.2.is_empty())
    })
    .await;
    assert_eq!(lora_series(&running)[0].0, "2", "max_lora is --max-loras");
    long.await.unwrap();

    // Finished: a newer series with empty sets is current; the sql-lora one stays.
    let after = page(&client).await;
    let series = lora_series(&after);
    assert_eq!(
        (series[0].1.as_str(), series[0].2.as_str()),
        ("", ""),
        "{series:?}"
    );
    assert!(series.iter().any(|s| s.1 == "sql-lora"), "{series:?}");
    let distinct: BTreeSet<_> = series.iter().map(|s| (&s.1, &s.2)).collect();
    assert_eq!(
        distinct.len(),
        series.len(),
        "one series per set: {series:?}"
    );

    // Two adapters at once: both listed, comma-separated.
    let a = {
        let client = client.clone_for_test();
        tokio::spawn(async move {
            complete(
                &client,
                json!({"model": "sql-lora", "prompt": "x", "max_tokens": 300}),
            )
            .await
        })
    };
    let b = {
        let client = client.clone_for_test();
        tokio::spawn(async move {
            complete(
                &client,
                json!({"model": "tweet-summary", "prompt": "y", "max_tokens": 300}),
            )
            .await
        })
    };
    poll_page(&client, "both adapters running", |p| {
        lora_series(p)
            .first()
            .is_some_and(|s| s.1 == "sql-lora,tweet-summary")
    })
    .await;
    a.await.unwrap();
    b.await.unwrap();
}

/// `Client` is not `Clone`; a second one to the same address.
trait CloneForTest {
    fn clone_for_test(&self) -> Client;
}

impl CloneForTest for Client {
    fn clone_for_test(&self) -> Client {
        let addr = self.url("").trim_start_matches("http://").parse().unwrap();
        Client::new(addr).unwrap()
    }
}

// ---------------------------------------------------------------------------------------------
// Engine behaviour

fn spawn_completion(client: &Client, body: Value) -> tokio::task::JoinHandle<Reply> {
    let client = client.clone_for_test();
    tokio::spawn(async move { complete(&client, body).await })
}

/// Simulated (arrival, admission, finish) of a reply, from its `x-sim-*` headers.
fn timeline(r: &Reply) -> (f64, f64, f64) {
    let arrival = header_f64(r, "x-sim-arrival-s");
    (
        arrival,
        arrival + header_f64(r, "x-sim-queue-s"),
        arrival + header_f64(r, "x-sim-e2e-s"),
    )
}

/// Whether `t` is (up to float rounding) one of `times`.
fn one_of(t: f64, times: &[f64]) -> bool {
    times.iter().any(|x| (x - t).abs() < 1e-6)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_beyond_max_num_seqs_wait_in_the_queue() {
    let (sim, client) = start(SimConfig {
        max_num_seqs: 2,
        ..fast()
    })
    .await;
    let tasks: Vec<_> = (0..4)
        .map(|i| {
            spawn_completion(
                &client,
                json!({"model": "tiny-llama", "prompt": format!("prompt {i}"), "max_tokens": 400}),
            )
        })
        .collect();
    let p = poll_page(&client, "2 running, 2 waiting", |p| {
        value(p, "vllm:num_requests_running", &[]) == 2.0
            && value(p, "vllm:num_requests_waiting", &[]) == 2.0
    })
    .await;
    assert_eq!(
        value(
            &p,
            "vllm:num_requests_waiting_by_reason",
            &[("reason", "capacity")]
        ),
        2.0
    );
    let mut replies = Vec::new();
    for t in tasks {
        replies.push(timeline(&t.await.unwrap()));
    }
    replies.sort_by(|a, b| a.1.total_cmp(&b.1));
    // Two started on arrival (at the next step boundary); each of the other two started the
    // moment one of those finished, after its 400 decode steps (≥ 400 × 15 ms simulated).
    let finishes = [replies[0].2, replies[1].2];
    for (arrival, admitted, _) in &replies[..2] {
        assert!(admitted - arrival < 0.1, "{replies:?}");
    }
    for (_, admitted, _) in &replies[2..] {
        assert!(one_of(*admitted, &finishes), "{replies:?}");
    }
    assert!(replies[2].1 - replies[0].1 > 6.0, "{replies:?}");
    let stats = sim.stats().await;
    assert_eq!((stats.completed, stats.running, stats.waiting), (4, 0, 0));
    let p = page(&client).await;
    assert_eq!(value(&p, "vllm:request_queue_time_seconds_count", &[]), 4.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_block_budget_queues_requests_and_reports_usage() {
    // 40 usable blocks of 16 tokens; each request needs 25 blocks for its 400-token prompt and up
    // to 38 by its end. Slower time, so the state is long enough to observe.
    let (sim, client) = start(SimConfig {
        num_gpu_blocks: 41,
        block_size: 16,
        max_model_len: 640,
        enable_prefix_caching: false,
        time_scale: 0.2,
        ..SimConfig::default()
    })
    .await;
    let prompt = "abcd".repeat(400);
    let body = json!({"model": "tiny-llama", "prompt": prompt, "max_tokens": 200});
    let a = spawn_completion(&client, body.clone());
    let b = spawn_completion(&client, body);
    let p = poll_page(&client, "1 running, 1 waiting on KV", |p| {
        value(p, "vllm:num_requests_running", &[]) == 1.0
            && value(p, "vllm:num_requests_waiting", &[]) == 1.0
    })
    .await;
    let kv = value(&p, "vllm:kv_cache_usage_perc", &[]);
    assert!(
        (0.62..=0.96).contains(&kv),
        "25–38 of 40 blocks in use: {kv}"
    );
    let (a, b) = (timeline(&a.await.unwrap()), timeline(&b.await.unwrap()));
    // Whichever went second started the moment the first finished and freed its blocks.
    let (first, second) = if a.1 <= b.1 { (a, b) } else { (b, a) };
    assert!(one_of(second.1, &[first.2]), "{first:?} {second:?}");
    let stats = sim.stats().await;
    assert_eq!(
        (stats.completed, stats.preemptions, stats.kv_cache_usage),
        (2, 0, 0.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_kv_cache_preempts_the_newest_request() {
    // Both 50-token prompts fit (4 blocks each of 10), but not both grown to 110 tokens.
    let (sim, client) = start(SimConfig {
        num_gpu_blocks: 11,
        block_size: 16,
        max_model_len: 160,
        ..fast()
    })
    .await;
    let tasks: Vec<_> = ["a", "b"]
        .iter()
        .map(|c| {
            spawn_completion(
                &client,
                json!({"model": "tiny-llama", "prompt": c.repeat(200), "max_tokens": 60}),
            )
        })
        .collect();
    for t in tasks {
        let body = t.await.unwrap().json().unwrap();
        assert_eq!(body["usage"]["completion_tokens"], 60);
    }
    let stats = sim.stats().await;
    assert!(stats.preemptions >= 1, "{stats:?}");
    assert_eq!((stats.completed, stats.generation_tokens), (2, 120));
    let p = page(&client).await;
    assert_eq!(
        value(&p, "vllm:num_preemptions_total", &[]),
        stats.preemptions as f64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_adapter_waits_for_a_free_slot_and_pays_the_load_delay() {
    let (sim, client) = start(SimConfig {
        max_loras: 1,
        lora_load_s: 1.0,
        ..fast()
    })
    .await;
    let a = spawn_completion(
        &client,
        json!({"model": "sql-lora", "prompt": "a", "max_tokens": 200}),
    );
    sim.wait_until(PROMPT, |s| s.running == 1).await.unwrap();
    let b = spawn_completion(
        &client,
        json!({"model": "tweet-summary", "prompt": "b", "max_tokens": 5}),
    );
    // B is deferred by the LoRA budget, and lora_requests_info shows it waiting.
    let p = poll_page(&client, "tweet-summary deferred", |p| {
        value(
            p,
            "vllm:num_requests_waiting_by_reason",
            &[("reason", "deferred")],
        ) == 1.0
    })
    .await;
    let current = &lora_series(&p)[0];
    assert_eq!(
        (current.1.as_str(), current.2.as_str()),
        ("sql-lora", "tweet-summary")
    );
    let (a, b) = (a.await.unwrap(), b.await.unwrap());
    // A paid the first load; B waited for A's 200 tokens (~3 s), then paid its own load.
    assert!(header_f64(&a, "x-sim-ttft-s") >= 1.0);
    assert_eq!(a.header("x-sim-adapter-loaded"), Some("1"));
    assert!(header_f64(&b, "x-sim-queue-s") > 2.5, "{:?}", b.headers);
    assert!(header_f64(&b, "x-sim-ttft-s") - header_f64(&b, "x-sim-queue-s") >= 1.0);
    let stats = sim.stats().await;
    assert_eq!(stats.adapter_loads, 2);
    assert_eq!(stats.resident_adapters, vec!["tweet-summary".to_string()]);

    // The slot holds tweet-summary now: it runs without a load; sql-lora must be loaded again.
    let again = complete(
        &client,
        json!({"model": "tweet-summary", "prompt": "c", "max_tokens": 2}),
    )
    .await;
    assert_eq!(again.header("x-sim-adapter-loaded"), Some("0"));
    assert!(header_f64(&again, "x-sim-ttft-s") < 0.5);
    let back = complete(
        &client,
        json!({"model": "sql-lora", "prompt": "d", "max_tokens": 2}),
    )
    .await;
    assert_eq!(back.header("x-sim-adapter-loaded"), Some("1"));
    let stats = sim.stats().await;
    assert_eq!(stats.adapter_loads, 3);
    assert_eq!(
        stats.adapter_loads_by_adapter,
        BTreeMap::from([
            ("sql-lora".to_string(), 2),
            ("tweet-summary".to_string(), 1)
        ])
    );
    assert_eq!(stats.requests_by_model.get("tweet-summary"), Some(&2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_lora_slots_run_two_adapters_together() {
    let (sim, client) = start(fast()).await;
    let a = spawn_completion(
        &client,
        json!({"model": "sql-lora", "prompt": "a", "max_tokens": 300}),
    );
    let b = spawn_completion(
        &client,
        json!({"model": "travel-helper", "prompt": "b", "max_tokens": 300}),
    );
    sim.wait_until(PROMPT, |s| s.running == 2).await.unwrap();
    let (a, b) = (a.await.unwrap(), b.await.unwrap());
    assert!(header_f64(&a, "x-sim-queue-s") < 0.5 && header_f64(&b, "x-sim-queue-s") < 0.5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_prompt_hits_the_prefix_cache() {
    let (sim, client) = start(fast()).await;
    let prompt = "0123456789abcdef".repeat(250); // 4000 bytes: 1000 tokens, 62 full blocks
    let first = complete(
        &client,
        json!({"model": "sql-lora", "prompt": prompt, "max_tokens": 2}),
    )
    .await;
    let second = complete(
        &client,
        json!({"model": "sql-lora", "prompt": prompt, "max_tokens": 2}),
    )
    .await;
    assert_eq!(first.header("x-sim-cached-tokens"), Some("0"));
    // Every full block but the one holding the last prompt token (always computed).
    assert_eq!(second.header("x-sim-cached-tokens"), Some("992"));
    let prefill = |r: &Reply| header_f64(r, "x-sim-ttft-s") - header_f64(r, "x-sim-queue-s");
    let (t1, t2) = (prefill(&first), prefill(&second));
    assert!(t2 < t1 - 0.08, "cached prefill is faster: {t1} vs {t2}");
    let p = page(&client).await;
    assert_eq!(value(&p, "vllm:prefix_cache_queries_total", &[]), 2000.0);
    assert_eq!(value(&p, "vllm:prefix_cache_hits_total", &[]), 992.0);
    assert_eq!(
        value(
            &p,
            "vllm:prompt_tokens_by_source_total",
            &[("source", "local_cache_hit")]
        ),
        992.0
    );

    // Another adapter never shares blocks; a half-shared prompt hits its shared half.
    complete(
        &client,
        json!({"model": "travel-helper", "prompt": prompt, "max_tokens": 2}),
    )
    .await;
    let half = format!("{}{}", &prompt[..2000], "x".repeat(2000));
    let third = complete(
        &client,
        json!({"model": "sql-lora", "prompt": half, "max_tokens": 2}),
    )
    .await;
    assert_eq!(third.header("x-sim-cached-tokens"), Some("496"));
    assert_eq!(sim.stats().await.prefix_cache_hits, 992 + 496);

    // Chat: conversations sharing a system prompt share its blocks.
    let system = "You are a helpful assistant. ".repeat(40);
    for question in ["first question?", "second question?"] {
        let body = json!({"model": "sql-lora", "max_tokens": 2,
            "messages": [{"role": "system", "content": system}, {"role": "user", "content": question}]});
        let r = client
            .post("/v1/chat/completions", body.to_string(), &[])
            .await
            .unwrap();
        assert_eq!(r.status, 200);
    }
    assert!(sim.stats().await.prefix_cache_hits >= 992 + 496 + 256);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn step_times_follow_the_stated_formula() {
    let cfg = fast();
    let (_sim, client) = start(cfg.clone()).await;
    // Alone: TTFT = one step with the whole prefill; then one token per base_itl.
    let prompt = "abcd".repeat(900); // 900 tokens
    let started = Instant::now();
    let r = complete(
        &client,
        json!({"model": "tiny-llama", "prompt": prompt, "max_tokens": 101}),
    )
    .await;
    let wall = started.elapsed().as_secs_f64();
    // Queue time absorbs the engine's wake-up; the rest is exactly the model.
    let queue = header_f64(&r, "x-sim-queue-s");
    let ttft = cfg.base_itl_s + 900.0 / cfg.prefill_tokens_per_s;
    assert!(
        (header_f64(&r, "x-sim-ttft-s") - queue - ttft).abs() < 1e-9,
        "{:?}",
        r.headers
    );
    let e2e = ttft + 100.0 * cfg.base_itl_s;
    assert!((header_f64(&r, "x-sim-e2e-s") - queue - e2e).abs() < 1e-9);
    // Wall time is simulated time × time_scale (never less).
    assert!(
        wall >= 0.95 * e2e * cfg.time_scale,
        "{wall} s for {e2e} simulated"
    );
    let p = page(&client).await;
    let tpot = value(&p, "vllm:request_time_per_output_token_seconds_sum", &[]);
    assert!((tpot - cfg.base_itl_s).abs() < 1e-9, "{tpot}");

    // Four together: a decode step of four costs base_itl × (1 + growth × 3); arrivals spread
    // over a few steps, so the mean lies between that and batch 1.
    let tasks: Vec<_> = (0..4)
        .map(|i| {
            spawn_completion(
                &client,
                json!({"model": "tiny-llama", "prompt": format!("{i}"), "max_tokens": 201}),
            )
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let p = page(&client).await;
    let (sum, n) = (
        value(&p, "vllm:request_time_per_output_token_seconds_sum", &[]) - tpot,
        value(&p, "vllm:request_time_per_output_token_seconds_count", &[]) - 1.0,
    );
    let want = cfg.base_itl_s * (1.0 + cfg.itl_growth * 3.0);
    let mean = sum / n;
    assert_eq!(n, 4.0);
    assert!(
        mean > cfg.base_itl_s * 1.02 && mean <= want + 1e-9,
        "mean TPOT {mean} vs {want}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_goes_away_aborts_its_request() {
    let (sim, client) = start(fast()).await;
    let body = json!({"model": "tiny-llama", "prompt": "x", "max_tokens": 1000, "stream": true});
    let mut s = client
        .post_streaming("/v1/completions", body.to_string(), &[])
        .await
        .unwrap();
    s.next_event(PROMPT).await.unwrap().unwrap();
    drop(s);
    let stats = sim.wait_until(PROMPT, |s| s.aborted == 1).await.unwrap();
    assert_eq!((stats.running, stats.completed), (0, 0));
    let p = page(&client).await;
    assert_eq!(
        value(
            &p,
            "vllm:request_success_total",
            &[("finished_reason", "abort")]
        ),
        1.0
    );
    assert_eq!(value(&p, "vllm:kv_cache_usage_perc", &[]), 0.0);
}

// ---------------------------------------------------------------------------------------------
// Reply formats

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_have_the_fixture_shapes() {
    let (_sim, client) = start(fast()).await;
    let r = complete(
        &client,
        json!({"model": "sql-lora", "prompt": "SELECT", "max_tokens": 20}),
    )
    .await;
    assert_eq!(shape(&r.text()), shape(fixture("completion.json").trim()));
    assert_eq!(r.header("content-type"), Some("application/json"));
    let body = json!({"model": "tweet-summary", "messages": [{"role": "user", "content": "hi"}]});
    let r = client
        .post("/v1/chat/completions", body.to_string(), &[])
        .await
        .unwrap();
    assert_eq!(
        shape(&r.text()),
        shape(fixture("chat-completion.json").trim())
    );
    assert_eq!(
        r.json().unwrap()["usage"]["completion_tokens"],
        16,
        "default max_tokens"
    );
    let r = client.get("/v1/models", &[]).await.unwrap();
    assert_eq!(shape(&r.text()), shape(fixture("models.json").trim()));
    let r = client
        .post(
            "/v1/completions",
            json!({"model": "no-such-model", "prompt": "x"}).to_string(),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(r.status, 404);
    assert_eq!(r.text(), fixture("error-unknown-model.json").trim());
    let r = client.get("/health", &[]).await.unwrap();
    assert_eq!((r.status, r.body.len()), (200, 0));
    let too_long = json!({"model": "tiny-llama", "prompt": "x", "max_tokens": 5000});
    let r = client
        .post("/v1/completions", too_long.to_string(), &[])
        .await
        .unwrap();
    assert_eq!(r.status, 400, "{}", r.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_have_the_fixture_shapes() {
    let (_sim, client) = start(fast()).await;
    // Chat with usage: as chat-stream-with-usage.sse (8 tokens).
    let body = json!({"model": "tweet-summary", "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 8, "stream": true, "stream_options": {"include_usage": true}});
    let r = client
        .post("/v1/chat/completions", body.to_string(), &[])
        .await
        .unwrap();
    assert_eq!(
        r.header("content-type"),
        Some("text/event-stream; charset=utf-8")
    );
    let ours = sse_events(&r.text());
    assert_eq!(
        shapes(&ours),
        shapes(&sse_events(&fixture("chat-stream-with-usage.sse")))
    );
    let usage: Value = serde_json::from_str(&ours[ours.len() - 2]).unwrap();
    assert_eq!(usage["usage"]["completion_tokens"], 8);

    // Completions without usage: as completion-stream-no-usage.sse (8 tokens).
    let body = json!({"model": "sql-lora", "prompt": "x", "max_tokens": 8, "stream": true});
    let r = client
        .post("/v1/completions", body.to_string(), &[])
        .await
        .unwrap();
    let ours = sse_events(&r.text());
    assert_eq!(
        shapes(&ours),
        shapes(&sse_events(&fixture("completion-stream-no-usage.sse")))
    );

    // The other two combinations: a usage event before [DONE] exactly when asked for.
    let body = json!({"model": "sql-lora", "prompt": "x", "max_tokens": 3, "stream": true,
        "stream_options": {"include_usage": true}});
    let r = client
        .post("/v1/completions", body.to_string(), &[])
        .await
        .unwrap();
    let ours = sse_events(&r.text());
    assert_eq!(ours.len(), 3 + 2);
    let usage: Value = serde_json::from_str(&ours[3]).unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(
        usage["usage"]["total_tokens"],
        usage["usage"]["prompt_tokens"].as_u64().unwrap() + 3
    );
    let body = json!({"model": "tweet-summary", "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 3, "stream": true});
    let r = client
        .post("/v1/chat/completions", body.to_string(), &[])
        .await
        .unwrap();
    let ours = sse_events(&r.text());
    assert_eq!(ours.len(), 1 + 3 + 1, "role, 3 tokens, [DONE]: {ours:?}");

    // Tokens arrive as they are generated, not all at the end.
    let body = json!({"model": "sql-lora", "prompt": "x", "max_tokens": 200, "stream": true});
    let mut s = client
        .post_streaming("/v1/completions", body.to_string(), &[])
        .await
        .unwrap();
    let first = Instant::now();
    s.next_event(PROMPT).await.unwrap().unwrap();
    let after_first = first.elapsed();
    let rest = s.rest_events(PROMPT).await.unwrap();
    assert_eq!(rest.len(), 199 + 1);
    assert!(first.elapsed() > after_first * 2, "streamed over time");
}

// ---------------------------------------------------------------------------------------------
// Admin knobs

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pin_and_unpin_decide_what_metrics_report() {
    let (sim, client) = start(fast()).await;
    let pin = json!({"waiting": 50, "running": 3, "kv": 0.95, "running_adapters": ["sql-lora"],
        "waiting_adapters": [], "max_lora": 2});
    let r = client
        .post("/__sim/pin", pin.to_string(), &[])
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let p = page(&client).await;
    assert_eq!(value(&p, "vllm:num_requests_waiting", &[]), 50.0);
    assert_eq!(value(&p, "vllm:num_requests_running", &[]), 3.0);
    assert_eq!(value(&p, "vllm:kv_cache_usage_perc", &[]), 0.95);
    let current = &lora_series(&p)[0];
    assert_eq!(
        (current.0.as_str(), current.1.as_str(), current.2.as_str()),
        ("2", "sql-lora", "")
    );

    // The engine keeps serving underneath, and the pin holds while it does.
    complete(
        &client,
        json!({"model": "travel-helper", "prompt": "x", "max_tokens": 3}),
    )
    .await;
    let p = page(&client).await;
    assert_eq!(value(&p, "vllm:num_requests_waiting", &[]), 50.0);
    assert_eq!(lora_series(&p)[0].1, "sql-lora");

    let r = client.request_delete("/__sim/pin").await;
    assert_eq!(r, 200);
    let p = page(&client).await;
    assert_eq!(value(&p, "vllm:num_requests_waiting", &[]), 0.0);
    assert_eq!(value(&p, "vllm:kv_cache_usage_perc", &[]), 0.0);
    let current = &lora_series(&p)[0];
    assert_eq!(
        (current.1.as_str(), current.2.as_str()),
        ("", ""),
        "live set current again"
    );

    // In-process: a partial pin changes only its fields.
    sim.pin(Pin {
        kv: Some(0.5),
        ..Pin::default()
    })
    .await;
    let p = page(&client).await;
    assert_eq!(value(&p, "vllm:kv_cache_usage_perc", &[]), 0.5);
    assert_eq!(value(&p, "vllm:num_requests_waiting", &[]), 0.0);
    sim.unpin().await;
    assert!(sim
        .metrics_text()
        .await
        .contains("vllm:kv_cache_usage_perc{engine=\"0\",model_name=\"tiny-llama\"} 0.0\n"));

    // Over HTTP, as benchmarks would drive a vllm-sim process.
    let admin = sim.admin().unwrap();
    admin
        .pin(&Pin {
            waiting: Some(7),
            ..Pin::default()
        })
        .await
        .unwrap();
    let p = parse_page(&admin.metrics_text().await.unwrap());
    assert_eq!(value(&p, "vllm:num_requests_waiting", &[]), 7.0);
    admin.unpin().await.unwrap();
    let stats = admin.stats().await.unwrap();
    assert_eq!(stats.requests_by_model.get("travel-helper"), Some(&1));
    assert_eq!(stats.adapter_loads, 1);
    let bad = client
        .post("/__sim/pin", r#"{"kv":"high"}"#, &[])
        .await
        .unwrap();
    assert_eq!(bad.status, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_fail_answers_500_or_hangs_until_released() {
    let (sim, client) = start(fast()).await;
    let set = |mode: &'static str| {
        let client = client.clone_for_test();
        async move {
            let r = client
                .post(
                    "/__sim/metrics-fail",
                    json!({"mode": mode}).to_string(),
                    &[],
                )
                .await
                .unwrap();
            assert_eq!(r.status, 200, "{}", r.text());
        }
    };
    set("500").await;
    assert_eq!(client.get("/metrics", &[]).await.unwrap().status, 500);
    set("hang").await;
    let hung = {
        let client = client.clone_for_test();
        tokio::spawn(async move { client.get("/metrics", &[]).await.unwrap() })
    };
    // Serving goes on while /metrics hangs.
    complete(
        &client,
        json!({"model": "tiny-llama", "prompt": "x", "max_tokens": 2}),
    )
    .await;
    // Nothing to poll for an absent answer: give it a bounded chance to (wrongly) arrive.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!hung.is_finished(), "/metrics answered while hanging");
    set("ok").await;
    let r = tokio::time::timeout(PROMPT, hung).await.unwrap().unwrap();
    assert_eq!(r.status, 200);
    sim.set_metrics_fail(MetricsFail::Status500).await;
    assert_eq!(client.get("/metrics", &[]).await.unwrap().status, 500);
    sim.set_metrics_fail(MetricsFail::Ok).await;
    assert_eq!(client.get("/metrics", &[]).await.unwrap().status, 200);
    let bad = client
        .post("/__sim/metrics-fail", r#"{"mode":"sometimes"}"#, &[])
        .await
        .unwrap();
    assert_eq!(bad.status, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_pods_serve_pinned_and_failing_metrics_too() {
    let pod = Pod::start_next(PodOptions {
        adapters: vec!["sql-lora".into()],
        ..PodOptions::default()
    })
    .await
    .unwrap();
    let client = Client::new(pod.addr()).unwrap();
    let fixture_page = fixture("metrics-idle.txt");
    assert_eq!(
        client.get("/metrics", &[]).await.unwrap().text(),
        fixture_page
    );

    pod.pin(&Pin {
        waiting: Some(9),
        kv: Some(0.9),
        running_adapters: Some(vec!["sql-lora".into()]),
        ..Pin::default()
    });
    let p = page(&client).await;
    assert_eq!(value(&p, "vllm:num_requests_waiting", &[]), 9.0);
    assert_eq!(value(&p, "vllm:kv_cache_usage_perc", &[]), 0.9);
    assert_eq!(lora_series(&p)[0].1, "sql-lora");
    pod.pin(&Pin {
        running_adapters: Some(vec![]),
        ..Pin::default()
    });
    let series = lora_series(&page(&client).await);
    assert_eq!((series.len(), series[0].1.as_str()), (2, ""), "{series:?}");

    pod.set_metrics_page(Some("custom 1\n".into()));
    assert_eq!(
        client.get("/metrics", &[]).await.unwrap().text(),
        "custom 1\n"
    );
    pod.unpin();
    assert_eq!(
        client.get("/metrics", &[]).await.unwrap().text(),
        fixture_page
    );

    pod.set_metrics_fail(MetricsFail::Status500);
    assert_eq!(client.get("/metrics", &[]).await.unwrap().status, 500);
    pod.set_metrics_fail(MetricsFail::Hang);
    let hung = {
        let client = client.clone_for_test();
        tokio::spawn(async move { client.get("/metrics", &[]).await.unwrap() })
    };
    // The hung scrape has arrived (scrapes are counted apart from served requests).
    let deadline = Instant::now() + PROMPT;
    while pod.scrape_count() < 7 {
        assert!(
            Instant::now() < deadline,
            "scrapes seen: {}",
            pod.scrape_count()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!hung.is_finished());
    pod.set_metrics_fail(MetricsFail::Ok);
    assert_eq!(
        tokio::time::timeout(PROMPT, hung)
            .await
            .unwrap()
            .unwrap()
            .status,
        200
    );
    assert_eq!(
        client.completion("sql-lora", &[]).await.unwrap().status,
        200
    );
}

/// DELETE is not in `Client`'s API.
trait Delete {
    async fn request_delete(&self, path: &str) -> u16;
}

impl Delete for Client {
    async fn request_delete(&self, path: &str) -> u16 {
        reqwest::Client::builder()
            .no_proxy()
            .build()
            .unwrap()
            .delete(self.url(path))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }
}

#[test]
fn configs_vllm_would_refuse_are_refused() {
    let too_small = SimConfig {
        num_gpu_blocks: 10,
        max_model_len: 4096,
        ..SimConfig::default()
    };
    assert!(too_small.validate().is_err());
    assert!(SimConfig {
        time_scale: 0.0,
        ..SimConfig::default()
    }
    .validate()
    .is_err());
    assert!(SimConfig {
        adapters: vec!["tiny-llama".into()],
        ..SimConfig::default()
    }
    .validate()
    .is_err());
    assert!(SimConfig::default().validate().is_ok());
    let mut c = SimConfig::default();
    c.set("itl-ms", "20").unwrap();
    c.set("adapters", "a,b").unwrap();
    assert_eq!((c.base_itl_s, c.adapters.len()), (0.02, 2));
    assert!(c.set("no-such-knob", "1").is_err());
}
