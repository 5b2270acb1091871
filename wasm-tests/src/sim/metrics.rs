//! `/metrics` in vLLM 0.32's exposition format (see the fixtures): the same family names, HELP
//! text, types, label names (sorted, as prometheus_client prints them), bucket boundaries, and
//! number formatting (Python float repr with Go-style exponents, counters with a `_created`
//! gauge family after each).

use super::{Pin, SimConfig};
use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch, as vLLM's timestamps (`_created`, `lora_requests_info`).
pub(crate) fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// A number as prometheus_client's `floatToGoString` prints it: Python's `repr`, except that
/// positive numbers with more than six digits before the point switch to an exponent.
pub fn fmt_float(d: f64) -> String {
    if d.is_nan() {
        return "NaN".to_string();
    }
    if d.is_infinite() {
        return if d > 0.0 { "+Inf" } else { "-Inf" }.to_string();
    }
    let s = py_repr(d);
    if let Some(dot) = s.find('.') {
        if d > 0.0 && dot > 6 && !s.contains('e') {
            let digits = format!("{}{}", &s[1..dot], &s[dot + 1..]);
            let mantissa = format!("{}.{}", &s[..1], digits);
            let mantissa = mantissa.trim_end_matches(['0', '.']);
            return format!("{mantissa}e+0{}", dot - 1);
        }
    }
    s
}

/// Python's `repr(float)`: shortest round-trip digits, exponent form below 1e-4 or from 1e16.
fn py_repr(d: f64) -> String {
    if d == 0.0 {
        return if d.is_sign_negative() { "-0.0" } else { "0.0" }.to_string();
    }
    let a = d.abs();
    if !(1e-4..1e16).contains(&a) {
        let e = format!("{d:e}");
        let (mantissa, exp) = e.split_once('e').unwrap_or((e.as_str(), "0"));
        let exp: i32 = exp.parse().unwrap_or(0);
        let sign = if exp < 0 { '-' } else { '+' };
        return format!("{mantissa}e{sign}{:02}", exp.abs());
    }
    let s = format!("{d}");
    if s.contains('.') {
        s
    } else {
        format!("{s}.0")
    }
}

fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// `{a="1",b="2"}` with the names sorted, as vLLM's page has them.
fn labels(pairs: &[(&str, String)]) -> String {
    let mut sorted: Vec<&(&str, String)> = pairs.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(b.0));
    let inner: Vec<String> = sorted
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", escape_label(v)))
        .collect();
    format!("{{{}}}", inner.join(","))
}

/// A Prometheus histogram with fixed upper bounds (the `+Inf` bucket is implicit).
#[derive(Debug, Clone)]
pub(crate) struct Histogram {
    bounds: Vec<f64>,
    /// Per bucket (not cumulative), one more than `bounds` for `+Inf`.
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(bounds: Vec<f64>) -> Histogram {
        let n = bounds.len() + 1;
        Histogram {
            bounds,
            counts: vec![0; n],
            sum: 0.0,
            count: 0,
        }
    }

    pub(crate) fn observe(&mut self, v: f64) {
        let i = self
            .bounds
            .iter()
            .position(|b| v <= *b)
            .unwrap_or(self.bounds.len());
        self.counts[i] += 1;
        self.sum += v;
        self.count += 1;
    }
}

// Bucket boundaries as vLLM 0.32 prints them (fixtures).
const TTFT: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
];
const ITL: &[f64] = &[
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
    40.0, 80.0,
];
const REQUEST_TIME: &[f64] = &[
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
    480.0, 960.0, 1920.0, 7680.0,
];
const ITERATION_TOKENS: &[f64] = &[
    1.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0, 16384.0,
];
const PARAMS_N: &[f64] = &[1.0, 2.0, 5.0, 10.0, 20.0];
const PREEMPTIONS: &[f64] = &[1.0, 2.0, 3.0, 4.0, 5.0, 10.0, 20.0];

/// vLLM's 1-2-5 series up to `max` (its token-count buckets follow `max_model_len`; the fixture's
/// server had 1024, hence 1 … 1000).
fn buckets_125(max: u64) -> Vec<f64> {
    let mut out = Vec::new();
    let mut mag = 1u64;
    loop {
        for m in [1, 2, 5] {
            let v = m * mag;
            if v > max {
                return out;
            }
            out.push(v as f64);
        }
        mag = mag.saturating_mul(10);
    }
}

/// Counters and histograms since start (what vLLM's stat loggers accumulate).
#[derive(Debug, Clone)]
pub(crate) struct Recorded {
    pub prefix_queries: u64,
    pub prefix_hits: u64,
    pub preemptions: u64,
    pub prompt_tokens: u64,
    pub prompt_computed: u64,
    pub prompt_cached: u64,
    pub generation_tokens: u64,
    pub finished_length: u64,
    pub finished_abort: u64,
    pub h_prompt_tokens: Histogram,
    pub h_generation_tokens: Histogram,
    pub h_iteration_tokens: Histogram,
    pub h_max_num_generation_tokens: Histogram,
    pub h_params_n: Histogram,
    pub h_params_max_tokens: Histogram,
    pub h_ttft: Histogram,
    pub h_itl: Histogram,
    pub h_tpot: Histogram,
    pub h_e2e: Histogram,
    pub h_queue: Histogram,
    pub h_inference: Histogram,
    pub h_prefill: Histogram,
    pub h_decode: Histogram,
    pub h_num_preemptions: Histogram,
    pub h_prefill_kv_computed: Histogram,
    /// When the counters were created (the `_created` samples).
    pub created: f64,
}

impl Recorded {
    pub(crate) fn new(max_model_len: u64) -> Recorded {
        let tokens = buckets_125(max_model_len);
        let h = |b: &[f64]| Histogram::new(b.to_vec());
        Recorded {
            prefix_queries: 0,
            prefix_hits: 0,
            preemptions: 0,
            prompt_tokens: 0,
            prompt_computed: 0,
            prompt_cached: 0,
            generation_tokens: 0,
            finished_length: 0,
            finished_abort: 0,
            h_prompt_tokens: h(&tokens),
            h_generation_tokens: h(&tokens),
            h_iteration_tokens: h(ITERATION_TOKENS),
            h_max_num_generation_tokens: h(&tokens),
            h_params_n: h(PARAMS_N),
            h_params_max_tokens: h(&tokens),
            h_ttft: h(TTFT),
            h_itl: h(ITL),
            h_tpot: h(ITL),
            h_e2e: h(REQUEST_TIME),
            h_queue: h(REQUEST_TIME),
            h_inference: h(REQUEST_TIME),
            h_prefill: h(REQUEST_TIME),
            h_decode: h(REQUEST_TIME),
            h_num_preemptions: h(PREEMPTIONS),
            h_prefill_kv_computed: h(&tokens),
            created: unix_now(),
        }
    }
}

/// The label values of one `vllm:lora_requests_info` series.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LoraSet {
    pub max_lora: String,
    pub running: String,
    pub waiting: String,
}

/// `vllm:lora_requests_info` as vLLM keeps it: one series per adapter set that was ever current,
/// in order of first appearance, each valued with the Unix time it (last) became current — so the
/// newest value marks the current set. Nothing is emitted before the first set.
#[derive(Debug, Clone, Default)]
pub struct LoraHistory {
    series: Vec<(LoraSet, f64)>,
    current: Option<usize>,
    last_stamp: f64,
}

impl LoraHistory {
    /// Make `set` current (a no-op when it already is).
    pub(crate) fn set_current(&mut self, set: LoraSet) {
        if let Some(i) = self.current {
            if self.series[i].0 == set {
                return;
            }
        }
        self.stamp(set);
    }

    /// Make `set` current with a fresh timestamp even if it already was.
    pub(crate) fn stamp(&mut self, set: LoraSet) {
        // Strictly increasing, so "newest = current" holds even for changes within a microsecond.
        let ts = unix_now().max(self.last_stamp + 1e-6);
        self.last_stamp = ts;
        match self.series.iter().position(|(s, _)| *s == set) {
            Some(i) => {
                self.series[i].1 = ts;
                self.current = Some(i);
            }
            None => {
                self.series.push((set, ts));
                self.current = Some(self.series.len() - 1);
            }
        }
    }
}

/// The gauges of one page.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Gauges {
    pub running: f64,
    pub waiting_capacity: f64,
    pub waiting_deferred: f64,
    pub kv_usage: f64,
}

impl Gauges {
    /// Pinned values replace the live ones field by field.
    pub(crate) fn pinned(self, pin: Option<&Pin>) -> Gauges {
        let Some(pin) = pin else { return self };
        let mut g = self;
        if let Some(r) = pin.running {
            g.running = r as f64;
        }
        if let Some(w) = pin.waiting {
            g.waiting_capacity = w as f64;
            g.waiting_deferred = 0.0;
        }
        if let Some(kv) = pin.kv {
            g.kv_usage = kv;
        }
        g
    }
}

struct Page<'a> {
    out: String,
    base: Vec<(&'a str, String)>,
}

impl Page<'_> {
    fn head(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, extra: &[(&str, String)], v: f64) {
        let mut pairs = self.base.clone();
        pairs.extend(extra.iter().cloned());
        let _ = writeln!(self.out, "{name}{} {}", labels(&pairs), fmt_float(v));
    }

    fn gauge(&mut self, name: &str, help: &str, v: f64) {
        self.head(name, "gauge", help);
        self.sample(name, &[], v);
    }

    /// A counter family `<stem>_total` and its `<stem>_created` gauge family.
    fn counter(
        &mut self,
        stem: &str,
        help: &str,
        series: &[(&[(&str, String)], f64)],
        created: f64,
    ) {
        let total = format!("{stem}_total");
        self.head(&total, "counter", help);
        for (extra, v) in series {
            self.sample(&total, extra, *v);
        }
        let created_name = format!("{stem}_created");
        self.head(&created_name, "gauge", help);
        for (extra, _) in series {
            self.sample(&created_name, extra, created);
        }
    }

    fn histogram(&mut self, name: &str, help: &str, h: &Histogram, created: f64) {
        self.head(name, "histogram", help);
        let bucket = format!("{name}_bucket");
        let mut cumulative = 0;
        for (i, n) in h.counts.iter().enumerate() {
            cumulative += n;
            let le = h.bounds.get(i).copied().unwrap_or(f64::INFINITY);
            self.sample(&bucket, &[("le", fmt_float(le))], cumulative as f64);
        }
        self.sample(&format!("{name}_count"), &[], h.count as f64);
        self.sample(&format!("{name}_sum"), &[], h.sum);
        let created_name = format!("{name}_created");
        self.head(&created_name, "gauge", help);
        self.sample(&created_name, &[], created);
    }
}

/// The whole page. Families follow the order of vLLM's page.
pub(crate) fn render(cfg: &SimConfig, g: &Gauges, r: &Recorded, lora: &LoraHistory) -> String {
    let mut p = Page {
        out: String::with_capacity(24 * 1024),
        base: vec![
            ("engine", "0".to_string()),
            ("model_name", cfg.base_model.clone()),
        ],
    };
    let c = r.created;
    p.gauge(
        "vllm:num_requests_running",
        "Number of requests in model execution batches.",
        g.running,
    );
    p.gauge(
        "vllm:num_requests_waiting",
        "Number of requests waiting to be processed.",
        g.waiting_capacity + g.waiting_deferred,
    );
    p.head(
        "vllm:num_requests_waiting_by_reason",
        "gauge",
        "Number of waiting requests by reason. Reason labels: 'capacity' = waiting for scheduling capacity; 'deferred' = deferred by transient constraints (LoRA budget, KV transfer, blocked status). Sum of all reasons equals vllm:num_requests_waiting.",
    );
    for (reason, v) in [
        ("capacity", g.waiting_capacity),
        ("deferred", g.waiting_deferred),
    ] {
        p.sample(
            "vllm:num_requests_waiting_by_reason",
            &[("reason", reason.to_string())],
            v,
        );
    }
    p.head(
        "vllm:engine_sleep_state",
        "gauge",
        "Engine sleep state; awake = 0 means engine is sleeping; awake = 1 means engine is awake; weights_offloaded = 1 means sleep level 1; discard_all = 1 means sleep level 2.",
    );
    for (state, v) in [
        ("awake", 1.0),
        ("weights_offloaded", 0.0),
        ("discard_all", 0.0),
    ] {
        p.sample(
            "vllm:engine_sleep_state",
            &[("sleep_state", state.to_string())],
            v,
        );
    }
    p.gauge(
        "vllm:kv_cache_usage_perc",
        "KV-cache usage. 1 means 100 percent usage.",
        g.kv_usage,
    );
    p.counter(
        "vllm:prefix_cache_queries",
        "Prefix cache queries, in terms of number of queried tokens.",
        &[(&[], r.prefix_queries as f64)],
        c,
    );
    p.counter(
        "vllm:prefix_cache_hits",
        "Prefix cache hits, in terms of number of cached tokens.",
        &[(&[], r.prefix_hits as f64)],
        c,
    );
    p.counter(
        "vllm:num_preemptions",
        "Cumulative number of preemption from the engine.",
        &[(&[], r.preemptions as f64)],
        c,
    );
    p.counter(
        "vllm:prompt_tokens",
        "Number of prefill tokens processed.",
        &[(&[], r.prompt_tokens as f64)],
        c,
    );
    let source = |s: &str| [("source", s.to_string())];
    p.counter(
        "vllm:prompt_tokens_by_source",
        "Number of prompt tokens by source.",
        &[
            (&source("local_compute"), r.prompt_computed as f64),
            (&source("local_cache_hit"), r.prompt_cached as f64),
            (&source("external_kv_transfer"), 0.0),
        ],
        c,
    );
    p.counter(
        "vllm:prompt_tokens_cached",
        "Number of cached prompt tokens (local + external).",
        &[(&[], r.prompt_cached as f64)],
        c,
    );
    p.counter(
        "vllm:prompt_tokens_cached_by_source",
        "Prefix-cache hit tokens by the cache tier that supplied them: device (local HBM), host (offloaded to DRAM), disk, p2p (transferred from another vLLM instance) or external_unspecified. Counted at admission; sums to vllm:prefix_cache_hits + vllm:external_prefix_cache_hits.",
        &[
            (&source("device"), r.prompt_cached as f64),
            (&source("host"), 0.0),
            (&source("p2p"), 0.0),
            (&source("disk"), 0.0),
            (&source("external_unspecified"), 0.0),
        ],
        c,
    );
    p.counter(
        "vllm:generation_tokens",
        "Number of generation tokens processed.",
        &[(&[], r.generation_tokens as f64)],
        c,
    );
    let reason = |s: &str| [("finished_reason", s.to_string())];
    p.counter(
        "vllm:request_success",
        "Count of successfully processed requests.",
        &[
            (&reason("stop"), 0.0),
            (&reason("length"), r.finished_length as f64),
            (&reason("abort"), r.finished_abort as f64),
            (&reason("error"), 0.0),
            (&reason("repetition"), 0.0),
        ],
        c,
    );
    let histograms: [(&str, &str, &Histogram); 16] = [
        (
            "vllm:request_prompt_tokens",
            "Number of prefill tokens processed.",
            &r.h_prompt_tokens,
        ),
        (
            "vllm:request_generation_tokens",
            "Number of generation tokens processed.",
            &r.h_generation_tokens,
        ),
        (
            "vllm:iteration_tokens_total",
            "Histogram of number of tokens per engine_step.",
            &r.h_iteration_tokens,
        ),
        (
            "vllm:request_max_num_generation_tokens",
            "Histogram of maximum number of requested generation tokens.",
            &r.h_max_num_generation_tokens,
        ),
        (
            "vllm:request_params_n",
            "Histogram of the n request parameter.",
            &r.h_params_n,
        ),
        (
            "vllm:request_params_max_tokens",
            "Histogram of the max_tokens request parameter.",
            &r.h_params_max_tokens,
        ),
        (
            "vllm:time_to_first_token_seconds",
            "Histogram of time to first token in seconds.",
            &r.h_ttft,
        ),
        (
            "vllm:inter_token_latency_seconds",
            "Histogram of inter-token latency in seconds.",
            &r.h_itl,
        ),
        (
            "vllm:request_time_per_output_token_seconds",
            "Histogram of time_per_output_token_seconds per request.",
            &r.h_tpot,
        ),
        (
            "vllm:e2e_request_latency_seconds",
            "Histogram of e2e request latency in seconds.",
            &r.h_e2e,
        ),
        (
            "vllm:request_queue_time_seconds",
            "Histogram of time spent in WAITING phase for request.",
            &r.h_queue,
        ),
        (
            "vllm:request_inference_time_seconds",
            "Histogram of time spent in RUNNING phase for request.",
            &r.h_inference,
        ),
        (
            "vllm:request_prefill_time_seconds",
            "Histogram of time spent in PREFILL phase for request.",
            &r.h_prefill,
        ),
        (
            "vllm:request_decode_time_seconds",
            "Histogram of time spent in DECODE phase for request.",
            &r.h_decode,
        ),
        (
            "vllm:request_num_preemptions",
            "Histogram of the number of times a request was preempted.",
            &r.h_num_preemptions,
        ),
        (
            "vllm:request_prefill_kv_computed_tokens",
            "Histogram of new KV tokens computed during prefill (excluding cached tokens).",
            &r.h_prefill_kv_computed,
        ),
    ];
    for (name, help, h) in histograms {
        p.histogram(name, help, h, c);
    }
    // These two carry no engine/model labels in vLLM.
    p.base.clear();
    p.head(
        "vllm:lora_requests_info",
        "gauge",
        "Running stats on lora requests.",
    );
    for (set, ts) in &lora.series {
        p.sample(
            "vllm:lora_requests_info",
            &[
                ("max_lora", set.max_lora.clone()),
                ("running_lora_adapters", set.running.clone()),
                ("waiting_lora_adapters", set.waiting.clone()),
            ],
            *ts,
        );
    }
    p.head(
        "vllm:cache_config_info",
        "gauge",
        "Information of the LLMEngine CacheConfig",
    );
    p.sample("vllm:cache_config_info", &cache_config_labels(cfg), 1.0);
    p.out
}

/// The labels of `vllm:cache_config_info`: the fixture's, with this simulator's sizes.
fn cache_config_labels(cfg: &SimConfig) -> Vec<(&'static str, String)> {
    let b = |v: bool| if v { "True" } else { "False" }.to_string();
    let s = |v: &str| v.to_string();
    let tokens = u64::from(cfg.num_gpu_blocks) * u64::from(cfg.block_size);
    vec![
        ("_block_size_resolved", s("True")),
        ("block_size", cfg.block_size.to_string()),
        ("cache_dtype", s("auto")),
        ("cache_hit_alignment_tokens", s("None")),
        ("effective_attention_block_size", cfg.block_size.to_string()),
        ("enable_mamba_shared_prefix_checkpoint", s("False")),
        ("enable_prefix_caching", b(cfg.enable_prefix_caching)),
        ("engine", s("0")),
        ("gpu_memory_utilization", s("0.9")),
        ("hash_block_size", s("None")),
        ("is_attention_free", s("False")),
        ("kv_cache_dtype_skip_layers", s("[]")),
        ("kv_cache_layout", s("None")),
        (
            "kv_cache_max_concurrency",
            fmt_float(tokens as f64 / cfg.max_model_len.max(1) as f64),
        ),
        (
            "kv_cache_memory_bytes",
            (tokens * cfg.kv_bytes_per_token).to_string(),
        ),
        ("kv_cache_size_tokens", tokens.to_string()),
        ("kv_offloading_backend", s("native")),
        ("kv_offloading_size", s("None")),
        ("kv_sharing_fast_prefill", s("False")),
        ("mamba_block_size", s("None")),
        ("mamba_cache_dtype", s("auto")),
        ("mamba_cache_mode", s("none")),
        ("mamba_page_size_padded", s("None")),
        ("mamba_ssm_cache_dtype", s("auto")),
        ("num_cpu_blocks", s("None")),
        ("num_gpu_blocks", cfg.num_gpu_blocks.to_string()),
        ("num_gpu_blocks_override", s("None")),
        ("prefix_cache_retention_interval", s("0")),
        ("prefix_caching_hash_algo", s("sha256")),
        ("prefix_match_unit", s("None")),
        ("replayssm_buffer_len", s("16")),
        ("skip_page_size_padded", s("None")),
        ("sliding_window", s("None")),
        ("swa_bounded_replay", s("True")),
        ("use_kda_recoverssm", s("False")),
        ("use_replayssm", s("False")),
        ("user_specified_block_size", s("False")),
    ]
}

/// A `/metrics` page for a pod whose state is pinned rather than simulated (used by
/// [`crate::pod::Pod::pin`]): idle counters, the pinned gauges, and a LoRA history that gains a
/// new current series at each [`PinnedMetrics::pin`] with adapters.
#[derive(Debug, Clone)]
pub struct PinnedMetrics {
    config: SimConfig,
    pin: Pin,
    recorded: Recorded,
    lora: LoraHistory,
}

impl PinnedMetrics {
    pub fn new(config: SimConfig) -> PinnedMetrics {
        let recorded = Recorded::new(config.max_model_len);
        PinnedMetrics {
            config,
            pin: Pin::default(),
            recorded,
            lora: LoraHistory::default(),
        }
    }

    pub fn pin(&mut self, pin: &Pin) {
        if let Some(set) = pin.lora_set(self.config.max_loras) {
            self.lora.stamp(set);
        }
        self.pin = pin.clone();
    }

    pub fn render(&self) -> String {
        let gauges = Gauges::default().pinned(Some(&self.pin));
        render(&self.config, &gauges, &self.recorded, &self.lora)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_print_like_prometheus_client() {
        assert_eq!(fmt_float(0.0), "0.0");
        assert_eq!(fmt_float(3.0), "3.0");
        assert_eq!(fmt_float(109.0), "109.0");
        assert_eq!(fmt_float(0.001), "0.001");
        assert_eq!(fmt_float(0.00073260073260073), "0.00073260073260073");
        assert_eq!(fmt_float(0.00001), "1e-05");
        assert_eq!(fmt_float(f64::INFINITY), "+Inf");
        assert_eq!(fmt_float(1795444296.8770604), "1.7954442968770604e+09");
        assert_eq!(fmt_float(1073741824.0), "1.073741824e+09");
        assert_eq!(fmt_float(2560.0), "2560.0");
        assert_eq!(fmt_float(524288.0), "524288.0");
        assert_eq!(fmt_float(1e16), "1e+16");
    }

    #[test]
    fn one_two_five_buckets_follow_max_model_len() {
        assert_eq!(
            buckets_125(1024),
            vec![1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0]
        );
        assert_eq!(buckets_125(4096).last(), Some(&2000.0));
    }
}
