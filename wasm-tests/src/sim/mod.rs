//! A vLLM simulator: an OpenAI-compatible server per `ip:port` whose latency, queueing, KV cache,
//! prefix cache and LoRA slots behave like one vLLM 0.32 engine (V1 scheduler) on one GPU, and
//! whose `/metrics` page is vLLM's (names, HELP, types, labels, buckets; see the fixtures).
//!
//! - Serving: `POST /v1/completions`, `POST /v1/chat/completions` (whole or SSE, with or without
//!   `stream_options.include_usage`), `GET /v1/models`, `GET /health`, `GET /metrics`. Replies are
//!   shaped like the fixtures; an unknown model gets vLLM's 404. `max_tokens` (chat also
//!   `max_completion_tokens`) is the exact output length, default [`SimConfig::default_max_tokens`];
//!   prompt tokens are described in [`openai`].
//! - The engine model (queueing, chunked prefill, preemption, KV blocks, prefix cache, LoRA
//!   slots, step time) is described in [`engine`].
//! - Timings in `/metrics` and [`SimStats`] are simulated seconds; wall time is simulated time ×
//!   [`SimConfig::time_scale`]. Whole (non-streaming) replies also carry the request's own
//!   simulated timeline: `x-sim-arrival-s` (since the pod started), `x-sim-queue-s`,
//!   `x-sim-ttft-s`, `x-sim-e2e-s`, plus `x-sim-cached-tokens` and `x-sim-adapter-loaded` (0/1);
//!   every reply has `x-pod: ip:port`.
//! - Admin (HTTP, and the same as methods on [`Sim`] and [`SimAdmin`]):
//!   `POST /__sim/pin` `{"waiting":50,"running":3,"kv":0.95,"running_adapters":["sql-lora"],
//!   "waiting_adapters":[],"max_lora":2}` (every field optional) makes `/metrics` report those
//!   values instead of the simulated ones — the engine itself keeps running as before;
//!   `DELETE /__sim/pin` unpins; `POST /__sim/metrics-fail` `{"mode":"500"|"hang"|"ok"}` makes
//!   `/metrics` answer 500, or hold its answer until the mode changes; `GET /__sim/stats` returns
//!   [`SimStats`] as JSON; `GET /__sim/config` returns the parameters.

mod engine;
mod http;
pub mod metrics;
mod openai;

pub(crate) use engine::shared_prefix_len;
pub use engine::Probe;
pub use metrics::PinnedMetrics;

use anyhow::{anyhow, bail, Context, Result};
use engine::Engine;
use metrics::LoraSet;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// The simulator's parameters. Defaults: Llama-2-7B (fp16) served by vLLM on one A100-80GB, the
/// pool docs/contract.md's example is named after:
///
/// - `num_gpu_blocks` 7168 × `block_size` 16 ≈ 115k tokens: Llama-2-7B's KV cache takes
///   2 × 32 layers × 4096 × 2 bytes = 512 KiB per token; with `gpu_memory_utilization` 0.9
///   (72 GB) minus 12.6 GiB of weights and a few GiB of activations ≈ 56 GiB of KV cache, the
///   order of the "# GPU blocks" vLLM logs for this model and GPU. Block size 16 is vLLM's GPU
///   default.
/// - `max_num_seqs` 256, `max_num_batched_tokens` 8192, prefix caching on: vLLM V1's defaults for
///   the OpenAI server on a data-centre GPU. `max_model_len` 4096: Llama-2's context.
/// - `prefill_tokens_per_s` 9000: 7B parameters × 2 FLOP = 14 GFLOP per prompt token; an A100's
///   312 TFLOP/s at the ~40 % utilisation vLLM reaches in prefill gives ~9k tokens/s (a 1k-token
///   prompt takes ~110 ms + one step, the TTFT vLLM's published serving benchmarks show for
///   7–8B models at low load).
/// - `base_itl_s` 0.015 and `itl_growth` 0.01: a decode step at batch 1 streams the 13.5 GB of
///   weights through ~2 TB/s of HBM (≥ 7 ms; vLLM measures ~12–15 ms TPOT); the per-sequence
///   growth puts a full batch of 256 at ~53 ms, the TPOT order vLLM's benchmarks report for 7–8B
///   models at high concurrency on one GPU.
/// - `max_loras` 2: the `--max-loras 2` of the fixture's server and the Gateway API Inference
///   Extension's example deployment. `lora_load_s` 0.03: a rank-16 adapter of a 7B model is
///   ~80 MB, read from local NVMe and copied over PCIe in a few tens of ms; vLLM loads it inside
///   the step, so the whole batch waits.
#[derive(Debug, Clone, PartialEq)]
pub struct SimConfig {
    /// Served base model; also the `model_name` label of `/metrics`.
    pub base_model: String,
    /// LoRA adapters, served under their names.
    pub adapters: Vec<String>,
    /// Answer vLLM's 404 for other names (otherwise serve them as the base model).
    pub strict_models: bool,
    /// GPU adapter slots = distinct adapters in one batch.
    pub max_loras: u32,
    pub max_num_seqs: u32,
    /// Token budget of one step (chunked prefill).
    pub max_num_batched_tokens: u32,
    /// KV blocks, one of them vLLM's reserved null block.
    pub num_gpu_blocks: u32,
    /// Tokens per KV block.
    pub block_size: u32,
    /// Longest prompt + output; the token-count histograms' buckets follow it, as in vLLM.
    pub max_model_len: u64,
    pub prefill_tokens_per_s: f64,
    /// Decode step time at batch 1 (simulated seconds).
    pub base_itl_s: f64,
    /// Step time grows by this fraction of `base_itl_s` per extra sequence in the batch.
    pub itl_growth: f64,
    /// Time to load an adapter into a GPU slot (simulated seconds).
    pub lora_load_s: f64,
    /// Wall seconds per simulated second: 0.01 runs 100× faster than a real GPU.
    pub time_scale: f64,
    /// Output length when a request gives no `max_tokens` (vLLM's completions default).
    pub default_max_tokens: u32,
    pub enable_prefix_caching: bool,
    /// Only reported (`kv_cache_memory_bytes` of `vllm:cache_config_info`).
    pub kv_bytes_per_token: u64,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            base_model: "tiny-llama".to_string(),
            adapters: ["sql-lora", "tweet-summary", "travel-helper"]
                .map(str::to_string)
                .to_vec(),
            strict_models: true,
            max_loras: 2,
            max_num_seqs: 256,
            max_num_batched_tokens: 8192,
            num_gpu_blocks: 7168,
            block_size: 16,
            max_model_len: 4096,
            prefill_tokens_per_s: 9000.0,
            base_itl_s: 0.015,
            itl_growth: 0.01,
            lora_load_s: 0.03,
            time_scale: 1.0,
            default_max_tokens: 16,
            enable_prefix_caching: true,
            kv_bytes_per_token: 512 * 1024,
        }
    }
}

impl SimConfig {
    /// A decode step's time with `batch` sequences (at least one), before prefill and loads.
    pub fn decode_step_s(&self, batch: usize) -> f64 {
        self.base_itl_s * (1.0 + self.itl_growth * (batch.max(1) as f64 - 1.0))
    }

    /// Set one parameter by its command-line name (without `--`).
    pub fn set(&mut self, key: &str, value: &str) -> Result<()> {
        fn num<T: std::str::FromStr>(key: &str, v: &str) -> Result<T> {
            v.parse()
                .map_err(|_| anyhow!("--{key} {v:?}: invalid value"))
        }
        let ms = |v: &str| -> Result<f64> { Ok(num::<f64>(key, v)? / 1000.0) };
        match key {
            "base-model" => self.base_model = value.to_string(),
            "adapters" => {
                self.adapters = value
                    .split(',')
                    .filter(|a| !a.is_empty())
                    .map(str::to_string)
                    .collect()
            }
            "max-loras" => self.max_loras = num(key, value)?,
            "max-num-seqs" => self.max_num_seqs = num(key, value)?,
            "max-num-batched-tokens" => self.max_num_batched_tokens = num(key, value)?,
            "num-gpu-blocks" => self.num_gpu_blocks = num(key, value)?,
            "block-size" => self.block_size = num(key, value)?,
            "max-model-len" => self.max_model_len = num(key, value)?,
            "prefill-tokens-per-s" => self.prefill_tokens_per_s = num(key, value)?,
            "itl-ms" => self.base_itl_s = ms(value)?,
            "itl-growth" => self.itl_growth = num(key, value)?,
            "lora-load-ms" => self.lora_load_s = ms(value)?,
            "time-scale" => self.time_scale = num(key, value)?,
            "default-max-tokens" => self.default_max_tokens = num(key, value)?,
            "kv-bytes-per-token" => self.kv_bytes_per_token = num(key, value)?,
            "prefix-caching" => self.enable_prefix_caching = num(key, value)?,
            other => bail!("unknown parameter --{other}"),
        }
        Ok(())
    }

    /// Refuse what vLLM would refuse to start with (and what would make the simulation stall).
    pub fn validate(&self) -> Result<()> {
        let usable = u64::from(self.num_gpu_blocks.saturating_sub(1)) * u64::from(self.block_size);
        if !(self.time_scale.is_finite() && self.time_scale > 0.0) {
            bail!("time_scale must be > 0");
        }
        if self.block_size == 0 || self.max_num_seqs == 0 || self.max_num_batched_tokens == 0 {
            bail!("block_size, max_num_seqs and max_num_batched_tokens must be ≥ 1");
        }
        if usable < self.max_model_len {
            bail!(
                "the KV cache ({usable} tokens in {} usable blocks) cannot hold max_model_len {}",
                self.num_gpu_blocks.saturating_sub(1),
                self.max_model_len
            );
        }
        if !self.adapters.is_empty() && self.max_loras == 0 {
            bail!("max_loras must be ≥ 1 when adapters are served");
        }
        let rates_ok = self.prefill_tokens_per_s > 0.0
            && self.base_itl_s >= 0.0
            && self.itl_growth >= 0.0
            && self.lora_load_s >= 0.0;
        if !rates_ok {
            bail!("rates must be > 0 and times ≥ 0");
        }
        let mut names = self.adapters.clone();
        names.push(self.base_model.clone());
        names.sort();
        if names.windows(2).any(|w| w[0] == w[1]) {
            bail!("adapter names must be distinct from each other and from the base model");
        }
        Ok(())
    }

    pub fn to_json(&self) -> Value {
        json!({
            "base_model": self.base_model, "adapters": self.adapters,
            "strict_models": self.strict_models, "max_loras": self.max_loras,
            "max_num_seqs": self.max_num_seqs, "max_num_batched_tokens": self.max_num_batched_tokens,
            "num_gpu_blocks": self.num_gpu_blocks, "block_size": self.block_size,
            "max_model_len": self.max_model_len, "prefill_tokens_per_s": self.prefill_tokens_per_s,
            "base_itl_s": self.base_itl_s, "itl_growth": self.itl_growth,
            "lora_load_s": self.lora_load_s, "time_scale": self.time_scale,
            "default_max_tokens": self.default_max_tokens,
            "enable_prefix_caching": self.enable_prefix_caching,
            "kv_bytes_per_token": self.kv_bytes_per_token,
        })
    }
}

/// What `/metrics` reports instead of the simulated values (each field optional).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Pin {
    /// `vllm:num_requests_waiting` (all of it `reason="capacity"`).
    pub waiting: Option<u64>,
    /// `vllm:num_requests_running`.
    pub running: Option<u64>,
    /// `vllm:kv_cache_usage_perc`, a fraction.
    pub kv: Option<f64>,
    /// With `waiting_adapters` and `max_lora`: a new current `vllm:lora_requests_info` series.
    pub running_adapters: Option<Vec<String>>,
    pub waiting_adapters: Option<Vec<String>>,
    pub max_lora: Option<u32>,
}

impl Pin {
    /// Whether the pin decides `vllm:lora_requests_info`.
    pub fn pins_lora(&self) -> bool {
        self.running_adapters.is_some()
            || self.waiting_adapters.is_some()
            || self.max_lora.is_some()
    }

    pub(crate) fn lora_set(&self, max_loras: u32) -> Option<LoraSet> {
        if !self.pins_lora() {
            return None;
        }
        let join = |v: &Option<Vec<String>>| {
            let mut names = v.clone().unwrap_or_default();
            names.sort();
            names.dedup();
            names.join(",")
        };
        Some(LoraSet {
            max_lora: self.max_lora.unwrap_or(max_loras).to_string(),
            running: join(&self.running_adapters),
            waiting: join(&self.waiting_adapters),
        })
    }

    pub fn from_json(v: &Value) -> Result<Pin> {
        let obj = v.as_object().context("a pin is a JSON object")?;
        for key in obj.keys() {
            if ![
                "waiting",
                "running",
                "kv",
                "running_adapters",
                "waiting_adapters",
                "max_lora",
            ]
            .contains(&key.as_str())
            {
                bail!("unknown pin field {key:?}");
            }
        }
        let uint = |k: &str| -> Result<Option<u64>> {
            match obj.get(k) {
                None | Some(Value::Null) => Ok(None),
                Some(v) => v
                    .as_u64()
                    .map(Some)
                    .with_context(|| format!("{k} must be a non-negative integer")),
            }
        };
        let names = |k: &str| -> Result<Option<Vec<String>>> {
            match obj.get(k) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::Array(items)) => items
                    .iter()
                    .map(|i| {
                        i.as_str()
                            .map(str::to_string)
                            .with_context(|| format!("{k} must list strings"))
                    })
                    .collect::<Result<Vec<_>>>()
                    .map(Some),
                Some(_) => bail!("{k} must be a list of adapter names"),
            }
        };
        let kv = match obj.get("kv") {
            None | Some(Value::Null) => None,
            Some(v) => Some(
                v.as_f64()
                    .filter(|f| *f >= 0.0)
                    .context("kv must be a number ≥ 0")?,
            ),
        };
        Ok(Pin {
            waiting: uint("waiting")?,
            running: uint("running")?,
            kv,
            running_adapters: names("running_adapters")?,
            waiting_adapters: names("waiting_adapters")?,
            max_lora: uint("max_lora")?.map(|n| u32::try_from(n).unwrap_or(u32::MAX)),
        })
    }

    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        if let Some(v) = self.waiting {
            m.insert("waiting".into(), json!(v));
        }
        if let Some(v) = self.running {
            m.insert("running".into(), json!(v));
        }
        if let Some(v) = self.kv {
            m.insert("kv".into(), json!(v));
        }
        if let Some(v) = &self.running_adapters {
            m.insert("running_adapters".into(), json!(v));
        }
        if let Some(v) = &self.waiting_adapters {
            m.insert("waiting_adapters".into(), json!(v));
        }
        if let Some(v) = self.max_lora {
            m.insert("max_lora".into(), json!(v));
        }
        Value::Object(m)
    }
}

/// How `/metrics` answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MetricsFail {
    #[default]
    Ok,
    /// 500 with a short text body.
    Status500,
    /// No answer (not even headers) until the mode changes.
    Hang,
}

impl MetricsFail {
    pub fn as_str(self) -> &'static str {
        match self {
            MetricsFail::Ok => "ok",
            MetricsFail::Status500 => "500",
            MetricsFail::Hang => "hang",
        }
    }

    pub fn parse(s: &str) -> Result<MetricsFail> {
        match s {
            "ok" => Ok(MetricsFail::Ok),
            "500" => Ok(MetricsFail::Status500),
            "hang" => Ok(MetricsFail::Hang),
            other => bail!("unknown metrics-fail mode {other:?} (ok, 500, hang)"),
        }
    }
}

/// What a simulated pod has served, for benchmarks and tests. Times are simulated seconds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SimStats {
    /// Inference requests accepted (by requested model name in `requests_by_model`).
    pub requests: u64,
    pub requests_by_model: BTreeMap<String, u64>,
    /// Refused with 4xx (unknown model, bad body, too long).
    pub rejected: u64,
    pub completed: u64,
    /// Clients that went away before the end.
    pub aborted: u64,
    pub prompt_tokens: u64,
    pub generation_tokens: u64,
    /// The `usage` of the requests that completed (what their responses reported); aborted
    /// requests' tokens are in `prompt_tokens` / `generation_tokens` only.
    pub usage_prompt_tokens: u64,
    pub usage_completion_tokens: u64,
    /// Prefix-cache lookups and hits, in tokens (as vLLM counts them).
    pub prefix_cache_queries: u64,
    pub prefix_cache_hits: u64,
    pub adapter_loads: u64,
    pub adapter_loads_by_adapter: BTreeMap<String, u64>,
    pub preemptions: u64,
    /// Sums over completed requests.
    pub ttft_s_sum: f64,
    pub queue_s_sum: f64,
    pub e2e_s_sum: f64,
    /// Now: requests running and waiting, KV cache usage (fraction), adapters in GPU slots (least
    /// recently used first), simulated time since start.
    pub running: u64,
    pub waiting: u64,
    pub kv_cache_usage: f64,
    pub resident_adapters: Vec<String>,
    pub sim_time_s: f64,
    pub time_scale: f64,
}

impl SimStats {
    pub fn to_json(&self) -> Value {
        json!({
            "requests": self.requests, "requests_by_model": self.requests_by_model,
            "rejected": self.rejected, "completed": self.completed, "aborted": self.aborted,
            "prompt_tokens": self.prompt_tokens, "generation_tokens": self.generation_tokens,
            "usage_prompt_tokens": self.usage_prompt_tokens,
            "usage_completion_tokens": self.usage_completion_tokens,
            "prefix_cache_queries": self.prefix_cache_queries,
            "prefix_cache_hits": self.prefix_cache_hits,
            "adapter_loads": self.adapter_loads,
            "adapter_loads_by_adapter": self.adapter_loads_by_adapter,
            "preemptions": self.preemptions, "ttft_s_sum": self.ttft_s_sum,
            "queue_s_sum": self.queue_s_sum, "e2e_s_sum": self.e2e_s_sum,
            "running": self.running, "waiting": self.waiting,
            "kv_cache_usage": self.kv_cache_usage, "resident_adapters": self.resident_adapters,
            "sim_time_s": self.sim_time_s, "time_scale": self.time_scale,
        })
    }

    pub fn from_json(v: &Value) -> Result<SimStats> {
        let u = |k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0);
        let f = |k: &str| v.get(k).and_then(Value::as_f64).unwrap_or(0.0);
        let counts = |k: &str| -> BTreeMap<String, u64> {
            v.get(k)
                .and_then(Value::as_object)
                .map(|o| {
                    o.iter()
                        .map(|(k, n)| (k.clone(), n.as_u64().unwrap_or(0)))
                        .collect()
                })
                .unwrap_or_default()
        };
        if !v.is_object() {
            bail!("stats are a JSON object");
        }
        Ok(SimStats {
            requests: u("requests"),
            requests_by_model: counts("requests_by_model"),
            rejected: u("rejected"),
            completed: u("completed"),
            aborted: u("aborted"),
            prompt_tokens: u("prompt_tokens"),
            generation_tokens: u("generation_tokens"),
            usage_prompt_tokens: u("usage_prompt_tokens"),
            usage_completion_tokens: u("usage_completion_tokens"),
            prefix_cache_queries: u("prefix_cache_queries"),
            prefix_cache_hits: u("prefix_cache_hits"),
            adapter_loads: u("adapter_loads"),
            adapter_loads_by_adapter: counts("adapter_loads_by_adapter"),
            preemptions: u("preemptions"),
            ttft_s_sum: f("ttft_s_sum"),
            queue_s_sum: f("queue_s_sum"),
            e2e_s_sum: f("e2e_s_sum"),
            running: u("running"),
            waiting: u("waiting"),
            kv_cache_usage: f("kv_cache_usage"),
            resident_adapters: v
                .get("resident_adapters")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default(),
            sim_time_s: f("sim_time_s"),
            time_scale: f("time_scale"),
        })
    }
}

/// Simulated time: wall time since start divided by the time scale.
pub(crate) struct Clock {
    start: Instant,
    scale: f64,
}

impl Clock {
    pub(crate) fn now(&self) -> f64 {
        self.start.elapsed().as_secs_f64() / self.scale
    }

    fn instant_at(&self, t: f64) -> Instant {
        self.start + Duration::from_secs_f64((t * self.scale).max(0.0))
    }
}

pub(crate) struct Shared {
    pub cfg: SimConfig,
    pub addr: SocketAddr,
    pub clock: Clock,
    pub engine: Mutex<Engine>,
    /// The engine loop waits here while idle.
    pub wake: Notify,
    /// The (start, end) of the step in progress: arrivals during a step are stamped inside it, so
    /// simulated durations never go negative when the loop runs behind the wall clock.
    pub step_window: Mutex<Option<(f64, f64)>>,
    pub fail: watch::Sender<MetricsFail>,
    /// Inference requests received (accepted or not).
    pub received: watch::Sender<usize>,
    pub seq: AtomicU64,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Shared {
    /// Simulated arrival time of a request arriving now.
    pub(crate) fn arrival_time(&self) -> f64 {
        let now = self.clock.now();
        match *lock(&self.step_window) {
            Some((start, end)) => now.max(start).min(end),
            None => now,
        }
    }
}

/// The engine loop: schedule a step, wait out its simulated duration, apply it.
async fn run_engine(shared: Arc<Shared>) {
    let mut t = shared.clock.now();
    loop {
        let step = lock(&shared.engine).schedule(t);
        let Some(step) = step else {
            *lock(&shared.step_window) = None;
            shared.wake.notified().await;
            // Start at the arrival, not at the wake-up: the host's scheduling delay (magnified
            // by 1 / time_scale) is no simulated queueing; absolute deadlines catch up.
            let first = lock(&shared.engine).first_arrival();
            t = t.max(first.unwrap_or_else(|| shared.clock.now()));
            continue;
        };
        let end = t + step.duration;
        *lock(&shared.step_window) = Some((t, end));
        let deadline = shared.clock.instant_at(end);
        // Absolute deadlines: timer granularity delays single steps but never accumulates.
        if deadline > Instant::now() {
            tokio::time::sleep_until(deadline).await;
        }
        t = end;
        lock(&shared.engine).apply(step, t);
    }
}

/// See [`Sim::request_key`].
#[derive(Debug, Clone)]
pub struct RequestKey {
    pub adapter: Option<usize>,
    pub hashes: Vec<u64>,
    pub prompt_len: u32,
}

/// A running simulated pod. Dropping it stops the server, the engine and every connection.
pub struct Sim {
    shared: Arc<Shared>,
    server: JoinHandle<()>,
    engine: JoinHandle<()>,
}

impl Sim {
    /// Start a simulator on `addr` (port 0: the kernel picks one). Loopback addresses only.
    pub async fn start(addr: SocketAddr, config: SimConfig) -> Result<Sim> {
        if !addr.ip().is_loopback() {
            bail!("simulated pods only listen on loopback, not {addr}");
        }
        config.validate()?;
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding simulated pod at {addr}"))?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            engine: Mutex::new(Engine::new(config.clone())),
            clock: Clock {
                start: Instant::now(),
                scale: config.time_scale,
            },
            cfg: config,
            addr,
            wake: Notify::new(),
            step_window: Mutex::new(None),
            fail: watch::channel(MetricsFail::Ok).0,
            received: watch::channel(0).0,
            seq: AtomicU64::new(1),
        });
        let engine = tokio::spawn(run_engine(shared.clone()));
        let server = tokio::spawn(http::serve(listener, shared.clone()));
        Ok(Sim {
            shared,
            server,
            engine,
        })
    }

    /// Start on the next free loopback IP (see [`crate::addr`]), kernel-chosen port.
    pub async fn start_next(config: SimConfig) -> Result<Sim> {
        let ip = IpAddr::V4(crate::addr::next_pod_ip());
        Sim::start(SocketAddr::new(ip, 0), config).await
    }

    pub fn addr(&self) -> SocketAddr {
        self.shared.addr
    }

    /// `ip:port`, as the plugin configuration spells endpoints.
    pub fn endpoint(&self) -> String {
        self.shared.addr.to_string()
    }

    pub fn config(&self) -> &SimConfig {
        &self.shared.cfg
    }

    /// Make `/metrics` report the pinned values (replacing any earlier pin).
    pub async fn pin(&self, pin: Pin) {
        lock(&self.shared.engine).set_pin(Some(pin));
    }

    /// Report the simulated values again.
    pub async fn unpin(&self) {
        lock(&self.shared.engine).set_pin(None);
    }

    pub async fn set_metrics_fail(&self, mode: MetricsFail) {
        self.shared.fail.send_replace(mode);
    }

    pub async fn stats(&self) -> SimStats {
        lock(&self.shared.engine).snapshot_stats(self.shared.clock.now())
    }

    /// The `/metrics` page as it would be served now (pins applied, failure modes not).
    pub async fn metrics_text(&self) -> String {
        http::render_metrics(&self.shared)
    }

    /// Inference requests received so far (including refused ones).
    pub fn request_count(&self) -> usize {
        *self.shared.received.borrow()
    }

    /// Wait until this pod has received `n` inference requests.
    pub async fn wait_for_requests(&self, n: usize, timeout: Duration) -> Result<()> {
        let mut rx = self.shared.received.subscribe();
        let waited = tokio::time::timeout(timeout, async {
            rx.wait_for(|c| *c >= n).await.map(|_| ())
        })
        .await;
        match waited {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(anyhow!("simulator stopped")),
            Err(_) => Err(anyhow!(
                "{}: timed out after {timeout:?} waiting for {n} requests; have {}",
                self.endpoint(),
                self.request_count()
            )),
        }
    }

    /// Poll the stats until `cond` holds (every 2 ms, up to `timeout`).
    pub async fn wait_until(
        &self,
        timeout: Duration,
        cond: impl Fn(&SimStats) -> bool,
    ) -> Result<SimStats> {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.stats().await;
            if cond(&s) {
                return Ok(s);
            }
            if Instant::now() >= deadline {
                bail!(
                    "{}: condition not met within {timeout:?}; stats now {:?}",
                    self.endpoint(),
                    s
                );
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// The key under which this pod's engine knows a completions request: its adapter index, the
    /// chain hashes of its prompt's full blocks and its prompt tokens (as `POST /v1/completions`
    /// with a string prompt would compute them). Every pod with the same configuration gives the
    /// same key, so the benchmark's oracle computes it once per request.
    pub fn request_key(&self, model: &str, prompt: &str) -> RequestKey {
        let cfg = &self.shared.cfg;
        let adapter = cfg.adapters.iter().position(|a| a == model);
        let prompt_len = u32::try_from(prompt.len().div_ceil(4).max(1)).unwrap_or(u32::MAX);
        RequestKey {
            adapter,
            hashes: engine::block_hashes(prompt.as_bytes(), prompt_len, cfg.block_size, adapter),
            prompt_len,
        }
    }

    /// The engine's exact state now, as seen for the request `key` (the benchmark's oracle).
    pub fn probe(&self, key: &RequestKey) -> Probe {
        lock(&self.shared.engine).probe(key.adapter, &key.hashes, key.prompt_len)
    }

    /// An HTTP admin client for this pod (what a benchmark would use for a `vllm-sim` process).
    pub fn admin(&self) -> Result<SimAdmin> {
        SimAdmin::new(&self.endpoint())
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        self.shared.fail.send_replace(MetricsFail::Ok);
        self.server.abort();
        self.engine.abort();
    }
}

/// Start `n` simulators on consecutive fresh loopback IPs.
pub async fn start_sims(n: usize, config: &SimConfig) -> Result<Vec<Sim>> {
    let mut sims = Vec::with_capacity(n);
    for _ in 0..n {
        sims.push(Sim::start_next(config.clone()).await?);
    }
    Ok(sims)
}

/// Start one simulator per address.
pub async fn start_sims_at(addrs: &[SocketAddr], config: &SimConfig) -> Result<Vec<Sim>> {
    let mut sims = Vec::with_capacity(addrs.len());
    for addr in addrs {
        sims.push(Sim::start(*addr, config.clone()).await?);
    }
    Ok(sims)
}

/// `ip:port` of each simulator.
pub fn endpoints(sims: &[Sim]) -> Vec<String> {
    sims.iter().map(Sim::endpoint).collect()
}

/// The admin API of a simulator reached over HTTP (e.g. a `vllm-sim` process).
#[derive(Clone)]
pub struct SimAdmin {
    base: String,
    http: reqwest::Client,
}

impl SimAdmin {
    /// `endpoint`: `ip:port`.
    pub fn new(endpoint: &str) -> Result<SimAdmin> {
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(10))
            .build()?;
        Ok(SimAdmin {
            base: format!("http://{endpoint}"),
            http,
        })
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<String> {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        let resp = req.send().await?;
        let status = resp.status();
        let text = resp.text().await?;
        if !status.is_success() {
            bail!("{path}: {status}: {text}");
        }
        Ok(text)
    }

    pub async fn pin(&self, pin: &Pin) -> Result<()> {
        self.send(reqwest::Method::POST, "/__sim/pin", Some(pin.to_json()))
            .await
            .map(|_| ())
    }

    pub async fn unpin(&self) -> Result<()> {
        self.send(reqwest::Method::DELETE, "/__sim/pin", None)
            .await
            .map(|_| ())
    }

    pub async fn set_metrics_fail(&self, mode: MetricsFail) -> Result<()> {
        let body = json!({"mode": mode.as_str()});
        self.send(reqwest::Method::POST, "/__sim/metrics-fail", Some(body))
            .await
            .map(|_| ())
    }

    pub async fn stats(&self) -> Result<SimStats> {
        let text = self
            .send(reqwest::Method::GET, "/__sim/stats", None)
            .await?;
        SimStats::from_json(&serde_json::from_str(&text)?)
    }

    pub async fn metrics_text(&self) -> Result<String> {
        self.send(reqwest::Method::GET, "/metrics", None).await
    }
}
