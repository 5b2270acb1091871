//! Engine dialects: which series of a `/metrics` page mean "waiting", "running", "KV-cache use",
//! LoRA adapters and cache geometry for each serving engine, and how a page becomes one
//! [`EndpointState`].
//!
//! Reading rules, the same for every engine:
//! * Several series of one metric (vLLM data-parallel engines `engine="0"`, `"1"`, several
//!   models): waiting and running are summed, KV-cache use is the mean of the series.
//! * Counts: NaN series are ignored (if none is left the key is missing), negative ones count 0,
//!   +Inf and huge ones saturate at `u32::MAX`, fractions round to the nearest integer.
//! * KV-cache use: each series clamped to [0, 1] (NaN ignored). Taken from free/total blocks
//!   when the dialect has them and the page gives a usable total (> 0), else from the usage
//!   metric, else (vLLM v0) from `vllm:gpu_cache_usage_perc`.
//! * LoRA (`vllm:lora_requests_info`): one series per adapter set that was ever current, its
//!   value the Unix time it became current; the newest finite one per `engine` label value counts.
//!   Adapters are the union over engines (names split on commas, blanks dropped), `max_lora` the
//!   smallest. An adapter listed as running is not also reported as waiting. No series at all
//!   (vLLM before the first LoRA request): no adapters, `max_lora` unknown.
//! * Base model (vLLM dialects): the `model_name` label of the first waiting series, as
//!   `scheduling::adapter_hash` (it names the base model; adapters have their own names).
//! * Cache configuration: the first series with a usable `block_size` / `num_gpu_blocks`
//!   (`"None"` and other non-numbers: unknown).
//! * Missing waiting, running or KV use makes the scrape incomplete ([`Scrape::missing`]);
//!   LoRA and cache configuration are optional.

use super::prometheus::{for_each_sample, parse_selector, Labels, ParseStats, Sample};
use crate::config::Engine;
use crate::pool::EndpointState;
use std::borrow::Cow;

/// The keys `pools[].metrics.names` may override, camelCase, in the order [`Dialect`] documents.
pub const OVERRIDE_KEYS: [&str; 7] = [
    "waiting",
    "running",
    "kvCacheUsage",
    "loraInfo",
    "cacheConfig",
    "kvBlocksFree",
    "kvBlocksTotal",
];

/// More distinct `engine` label values than this on `vllm:lora_requests_info` is not a real
/// server; the cap keeps a hostile page from making the per-engine bookkeeping quadratic.
const MAX_LORA_ENGINES: usize = 64;
/// Likewise for adapters in one list (vLLM's `--max-loras` is a small number).
const MAX_ADAPTERS: usize = 1024;

/// A metric name plus label matchers every accepted series must carry.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Selector {
    name: String,
    matchers: Vec<(String, String)>,
}

impl Selector {
    fn named(name: &str) -> Option<Selector> {
        Some(Selector {
            name: name.to_string(),
            matchers: Vec::new(),
        })
    }

    fn with_label(name: &str, label: &str, value: &str) -> Option<Selector> {
        Some(Selector {
            name: name.to_string(),
            matchers: vec![(label.to_string(), value.to_string())],
        })
    }

    fn matches(&self, s: &Sample<'_>) -> bool {
        s.name == self.name
            && self
                .matchers
                .iter()
                .all(|(k, v)| s.labels.get(k).is_some_and(|got| got == v.as_str()))
    }
}

fn matches(sel: &Option<Selector>, s: &Sample<'_>) -> bool {
    sel.as_ref().is_some_and(|sel| sel.matches(s))
}

/// The metric selectors for one engine, after configuration overrides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dialect {
    engine: Engine,
    waiting: Option<Selector>,
    running: Option<Selector>,
    kv_usage: Option<Selector>,
    /// vLLM v0's name for the same fraction, read only when `kv_usage` has no sample.
    kv_usage_v0: Option<Selector>,
    lora_info: Option<Selector>,
    cache_config: Option<Selector>,
    kv_blocks_free: Option<Selector>,
    kv_blocks_total: Option<Selector>,
    /// Distinct metric names of the selectors above: the parser's filter.
    wanted: Vec<String>,
}

impl Dialect {
    /// The dialect of `engine` with `overrides` applied.
    ///
    /// `overrides` are `(key, selector)` pairs from `pools[].metrics.names`. Keys:
    /// * `waiting`, `running`: request counts (gauges);
    /// * `kvCacheUsage`: KV-cache use as a fraction in [0, 1] (overriding it also drops vLLM's v0
    ///   fallback name);
    /// * `loraInfo`: vLLM-style LoRA info (labels `running_lora_adapters`,
    ///   `waiting_lora_adapters`, `max_lora`; value = timestamp, newest series wins);
    /// * `cacheConfig`: vLLM-style cache info (labels `block_size`, `num_gpu_blocks`);
    /// * `kvBlocksFree`, `kvBlocksTotal`: KV blocks free / in total; when both are set and the page
    ///   has a total > 0, KV use = 1 − free / total, preferred over `kvCacheUsage`.
    ///
    /// A selector is a metric name (`my_waiting`), which keeps the dialect's label matchers for
    /// that key (Triton's `request_type="waiting"`), or a name with matchers
    /// (`my_requests{kind="queued"}`), which replaces them; `name{}` matches any labels.
    /// The optional keys may be set for any engine. An unknown key or a selector that does not
    /// parse is an error naming it.
    pub fn new(engine: Engine, overrides: &[(String, String)]) -> Result<Dialect, String> {
        let mut d = Dialect::builtin(engine);
        for (key, value) in overrides {
            let slot = match key.as_str() {
                "waiting" => &mut d.waiting,
                "running" => &mut d.running,
                "kvCacheUsage" => {
                    d.kv_usage_v0 = None;
                    &mut d.kv_usage
                }
                "loraInfo" => &mut d.lora_info,
                "cacheConfig" => &mut d.cache_config,
                "kvBlocksFree" => &mut d.kv_blocks_free,
                "kvBlocksTotal" => &mut d.kv_blocks_total,
                _ => {
                    return Err(format!(
                        "unknown key \"{key}\"; expected one of {}",
                        OVERRIDE_KEYS.join(", ")
                    ))
                }
            };
            let Some((name, labels)) = parse_selector(value) else {
                return Err(format!(
                    "{key}: \"{value}\" is not a metric name or a name{{label=\"value\",...}} selector"
                ));
            };
            let matchers = match labels {
                Some(l) => l
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.into_owned()))
                    .collect(),
                None => slot.take().map(|s| s.matchers).unwrap_or_default(),
            };
            *slot = Some(Selector {
                name: name.to_string(),
                matchers,
            });
        }
        let mut wanted: Vec<String> = Vec::new();
        for sel in d.selectors().into_iter().flatten() {
            if !wanted.contains(&sel.name) {
                wanted.push(sel.name.clone());
            }
        }
        d.wanted = wanted;
        Ok(d)
    }

    fn builtin(engine: Engine) -> Dialect {
        let none = Dialect {
            engine,
            waiting: None,
            running: None,
            kv_usage: None,
            kv_usage_v0: None,
            lora_info: None,
            cache_config: None,
            kv_blocks_free: None,
            kv_blocks_total: None,
            wanted: Vec::new(),
        };
        let vllm = Dialect {
            waiting: Selector::named("vllm:num_requests_waiting"),
            running: Selector::named("vllm:num_requests_running"),
            kv_usage: Selector::named("vllm:kv_cache_usage_perc"),
            kv_usage_v0: Selector::named("vllm:gpu_cache_usage_perc"),
            lora_info: Selector::named("vllm:lora_requests_info"),
            cache_config: Selector::named("vllm:cache_config_info"),
            ..none.clone()
        };
        match engine {
            Engine::Vllm => vllm,
            Engine::VllmAscend => Dialect {
                kv_blocks_free: Selector::named("vllm_profiling_free_kvcache_blocks"),
                kv_blocks_total: Selector::named("vllm_profiling_total_kvcache_blocks"),
                ..vllm
            },
            Engine::Sglang => Dialect {
                waiting: Selector::named("sglang:num_queue_reqs"),
                running: Selector::named("sglang:num_running_reqs"),
                kv_usage: Selector::named("sglang:token_usage"),
                ..none
            },
            Engine::TrtllmServe => Dialect {
                waiting: Selector::named("trtllm_num_requests_waiting"),
                running: Selector::named("trtllm_num_requests_running"),
                kv_usage: Selector::named("trtllm_kv_cache_utilization"),
                ..none
            },
            Engine::TritonTrtllm => Dialect {
                waiting: Selector::with_label(
                    "nv_trt_llm_request_metrics",
                    "request_type",
                    "waiting",
                ),
                running: Selector::with_label(
                    "nv_trt_llm_request_metrics",
                    "request_type",
                    "scheduled",
                ),
                kv_usage: Selector::with_label(
                    "nv_trt_llm_kv_cache_block_metrics",
                    "kv_cache_block_type",
                    "fraction",
                ),
                ..none
            },
        }
    }

    fn selectors(&self) -> [&Option<Selector>; 8] {
        [
            &self.waiting,
            &self.running,
            &self.kv_usage,
            &self.kv_usage_v0,
            &self.lora_info,
            &self.cache_config,
            &self.kv_blocks_free,
            &self.kv_blocks_total,
        ]
    }

    pub fn engine(&self) -> Engine {
        self.engine
    }

    /// The metric names this dialect reads; every other line of a page is skipped unparsed.
    pub fn metric_names(&self) -> impl Iterator<Item = &str> {
        self.wanted.iter().map(String::as_str)
    }

    /// Whether lines named `name` are read.
    pub fn wants(&self, name: &str) -> bool {
        self.wanted.iter().any(|w| w == name)
    }
}

/// One page, read.
#[derive(Debug, Clone, PartialEq)]
pub struct Scrape {
    /// Every field but `last_scrape_ms`, `consecutive_failures` and `picks_at_scrape` (left at
    /// their defaults for the collector to set).
    pub state: EndpointState,
    pub stats: ParseStats,
    /// Required keys with no usable sample: `"waiting"`, `"running"`, `"kvCacheUsage"`. A
    /// scrape with any is not a measurement; its `state` holds zeros there.
    pub missing: Vec<&'static str>,
}

/// Reads `page` (a whole `/metrics` answer; any bytes) with `dialect`. Never panics.
pub fn parse_page(page: &[u8], dialect: &Dialect) -> Scrape {
    let mut acc = Acc::default();
    let stats = for_each_sample(page, |n| dialect.wants(n), |s| acc.add(dialect, s));
    acc.finish(stats)
}

#[derive(Default)]
struct Sum {
    total: f64,
    series: usize,
}

impl Sum {
    fn add(&mut self, v: f64) {
        self.total += v;
        self.series += 1;
    }

    fn mean(&self) -> Option<f64> {
        (self.series > 0).then(|| self.total / self.series as f64)
    }
}

/// The newest `lora_requests_info` series of one `engine` label value.
struct LoraSeries<'p> {
    engine: Option<Cow<'p, str>>,
    stamp: f64,
    labels: Labels<'p>,
}

#[derive(Default)]
struct Acc<'p> {
    waiting: Sum,
    running: Sum,
    kv_usage: Sum,
    kv_usage_v0: Sum,
    free_blocks: Sum,
    total_blocks: Sum,
    lora: Vec<LoraSeries<'p>>,
    block_size: Option<u32>,
    num_gpu_blocks: Option<u32>,
    base_model: Option<Cow<'p, str>>,
}

impl<'p> Acc<'p> {
    fn add(&mut self, d: &Dialect, s: Sample<'p>) {
        let v = s.value;
        // One series may feed several keys if overrides point them at the same name.
        if !v.is_nan() {
            for (sel, sum) in [
                (&d.waiting, &mut self.waiting),
                (&d.running, &mut self.running),
                (&d.kv_blocks_free, &mut self.free_blocks),
                (&d.kv_blocks_total, &mut self.total_blocks),
            ] {
                if matches(sel, &s) {
                    sum.add(v.max(0.0));
                }
            }
            for (sel, sum) in [
                (&d.kv_usage, &mut self.kv_usage),
                (&d.kv_usage_v0, &mut self.kv_usage_v0),
            ] {
                if matches(sel, &s) {
                    sum.add(v.clamp(0.0, 1.0));
                }
            }
        }
        if self.base_model.is_none()
            && matches!(d.engine, Engine::Vllm | Engine::VllmAscend)
            && matches(&d.waiting, &s)
        {
            self.base_model = s.labels.get("model_name");
        }
        if matches(&d.cache_config, &s) {
            self.block_size = self
                .block_size
                .or_else(|| label_u32(&s.labels, "block_size"));
            self.num_gpu_blocks = self
                .num_gpu_blocks
                .or_else(|| label_u32(&s.labels, "num_gpu_blocks"));
        }
        // The value is the Unix time the adapter set became current: non-finite ones say nothing.
        if matches(&d.lora_info, &s) && v.is_finite() {
            let engine = s.labels.get("engine");
            if let Some(cur) = self.lora.iter_mut().find(|l| l.engine == engine) {
                // `>=`: on a tie the later line, which prometheus_client wrote later.
                if v >= cur.stamp {
                    cur.stamp = v;
                    cur.labels = s.labels;
                }
            } else if self.lora.len() < MAX_LORA_ENGINES {
                self.lora.push(LoraSeries {
                    engine,
                    stamp: v,
                    labels: s.labels,
                });
            }
        }
    }

    fn finish(self, stats: ParseStats) -> Scrape {
        let mut missing = Vec::new();
        let mut count = |sum: &Sum, key: &'static str| {
            if sum.series == 0 {
                missing.push(key);
            }
            // `as` saturates: +Inf and > u32::MAX become u32::MAX.
            sum.total.round() as u32
        };
        let waiting = count(&self.waiting, "waiting");
        let running = count(&self.running, "running");
        let from_blocks = match (self.free_blocks.series, self.total_blocks.series) {
            (1.., 1..)
                if self.total_blocks.total > 0.0
                    && self.total_blocks.total.is_finite()
                    && self.free_blocks.total.is_finite() =>
            {
                Some((1.0 - self.free_blocks.total / self.total_blocks.total).clamp(0.0, 1.0))
            }
            _ => None,
        };
        let kv = from_blocks
            .or_else(|| self.kv_usage.mean())
            .or_else(|| self.kv_usage_v0.mean());
        if kv.is_none() {
            missing.push("kvCacheUsage");
        }

        let mut state = EndpointState {
            waiting,
            running,
            kv_cache_usage: kv.unwrap_or(0.0).clamp(0.0, 1.0) as f32,
            block_size: self.block_size,
            num_gpu_blocks: self.num_gpu_blocks,
            base_model: self
                .base_model
                .as_deref()
                .map_or(0, crate::scheduling::adapter_hash),
            ..EndpointState::default()
        };
        for series in &self.lora {
            add_adapters(
                &mut state.running_adapters,
                &series.labels,
                "running_lora_adapters",
            );
            add_adapters(
                &mut state.waiting_adapters,
                &series.labels,
                "waiting_lora_adapters",
            );
            // Several engines: the smallest slot count is what every engine can promise.
            if let Some(m) = label_u32(&series.labels, "max_lora") {
                state.max_lora = Some(state.max_lora.map_or(m, |cur| cur.min(m)));
            }
        }
        // In the vLLM 0.32 fixtures every series lists the same adapters as running and as
        // waiting (under load: 3 running requests, 0 waiting, travel-helper in both lists). A
        // running adapter waits for no slot; counting it twice would hide a free slot from the
        // LoRA-affinity scorer (running + waiting < max_lora).
        let running_adapters = &state.running_adapters;
        state
            .waiting_adapters
            .retain(|w| !running_adapters.contains(w));
        state.hash_adapters();
        Scrape {
            state,
            stats,
            missing,
        }
    }
}

/// Appends the comma-separated adapter names of label `key`, skipping blanks and repeats.
fn add_adapters(into: &mut Vec<String>, labels: &Labels<'_>, key: &str) {
    let Some(list) = labels.get(key) else { return };
    for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        if into.len() >= MAX_ADAPTERS {
            return;
        }
        if !into.iter().any(|a| a == name) {
            into.push(name.to_string());
        }
    }
}

/// A label holding a non-negative integer; `"None"`, empty or anything else → unknown.
fn label_u32(labels: &Labels<'_>, key: &str) -> Option<u32> {
    let v = labels.get(key)?;
    let v = v.trim();
    if let Ok(n) = v.parse::<u32>() {
        return Some(n);
    }
    // "4096.0" and the like.
    let f = v
        .parse::<f64>()
        .ok()
        .filter(|f| f.is_finite() && *f >= 0.0)?;
    Some(f.round() as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    const UNDER_LOAD: &str = include_str!("../../../testdata/vllm-0.32-cpu/metrics-under-load.txt");
    const IDLE: &str = include_str!("../../../testdata/vllm-0.32-cpu/metrics-idle.txt");

    fn dialect(engine: Engine) -> Dialect {
        Dialect::new(engine, &[]).unwrap()
    }

    fn overrides(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn read(engine: Engine, page: &str) -> Scrape {
        parse_page(page.as_bytes(), &dialect(engine))
    }

    fn approx(a: f32, b: f64) -> bool {
        (f64::from(a) - b).abs() <= b.abs() * 1e-6 + 1e-12
    }

    #[test]
    fn real_page_under_load() {
        let s = read(Engine::Vllm, UNDER_LOAD);
        assert!(s.missing.is_empty(), "{:?}", s.missing);
        assert_eq!(s.stats.garbage, 0);
        assert_eq!(s.stats.lines, 630);
        let st = &s.state;
        assert_eq!((st.waiting, st.running), (0, 3));
        assert!(
            approx(st.kv_cache_usage, 0.000_732_600_732_600_73),
            "{}",
            st.kv_cache_usage
        );
        // Newest of four series: travel-helper at 1795444123.58.
        assert_eq!(st.running_adapters, vec!["travel-helper".to_string()]);
        // Listed as waiting too by vLLM, but it is running.
        assert!(st.waiting_adapters.is_empty());
        assert_eq!(st.max_lora, Some(2));
        assert_eq!(st.block_size, Some(128));
        assert_eq!(st.num_gpu_blocks, Some(4096));
        assert_eq!(st.base_model, crate::scheduling::adapter_hash("tiny-llama"));
        assert_eq!(
            read(
                Engine::Sglang,
                "sglang:num_queue_reqs{model_name=\"m\"} 1\n"
            )
            .state
            .base_model,
            0,
            "vLLM dialects only"
        );
        assert_eq!(
            (
                st.last_scrape_ms,
                st.consecutive_failures,
                st.picks_at_scrape
            ),
            (0, 0, 0)
        );
    }

    #[test]
    fn real_page_idle() {
        let s = read(Engine::Vllm, IDLE);
        assert!(s.missing.is_empty(), "{:?}", s.missing);
        assert_eq!(s.stats.garbage, 0);
        let st = &s.state;
        assert_eq!((st.waiting, st.running), (0, 0));
        assert_eq!(st.kv_cache_usage, 0.0);
        // Newest series (1795444413.0979848) has empty adapter lists.
        assert!(st.running_adapters.is_empty());
        assert!(st.waiting_adapters.is_empty());
        assert_eq!(st.max_lora, Some(2));
        assert_eq!(st.block_size, Some(128));
        assert_eq!(st.num_gpu_blocks, Some(4096));
    }

    #[test]
    fn real_page_only_wanted_lines_are_parsed() {
        let s = read(Engine::Vllm, UNDER_LOAD);
        // waiting, running, kv, 4 × lora, cache config.
        assert_eq!(s.stats.samples, 8);
        assert!(s.stats.skipped > 300, "{:?}", s.stats);
        assert_eq!(
            dialect(Engine::Vllm).metric_names().collect::<Vec<_>>(),
            vec![
                "vllm:num_requests_waiting",
                "vllm:num_requests_running",
                "vllm:kv_cache_usage_perc",
                "vllm:gpu_cache_usage_perc",
                "vllm:lora_requests_info",
                "vllm:cache_config_info",
            ]
        );
    }

    #[test]
    fn real_page_with_crlf_reads_the_same() {
        let crlf = UNDER_LOAD.replace('\n', "\r\n");
        let a = read(Engine::Vllm, UNDER_LOAD);
        let b = read(Engine::Vllm, &crlf);
        assert_eq!(a.state, b.state);
        assert_eq!(b.stats.garbage, 0);
    }

    /// Cut points worth a full parse: every cut inside (or just after) a line the dialect reads,
    /// and every 101st elsewhere. A cut in an unwanted line only meets the name and newline
    /// scans, and the parser's own test cuts every line at every byte; the literal every-prefix
    /// run is `every_prefix_of_real_pages_exhaustive` (ignored: ~40 s unoptimised).
    fn cuts(page: &str, d: &Dialect) -> Vec<usize> {
        let mut cuts: Vec<usize> = (0..=page.len()).step_by(101).collect();
        let mut start = 0;
        for line in page.split_inclusive('\n') {
            let name = line.split(['{', ' ']).next().unwrap_or("");
            if d.wants(name) {
                cuts.extend(start..=start + line.len());
            }
            start += line.len();
        }
        cuts
    }

    fn check_prefixes(cuts: impl Iterator<Item = usize> + Clone) {
        let d = dialect(Engine::Vllm);
        for page in [UNDER_LOAD, IDLE] {
            let b = page.as_bytes();
            let waiting_at = page.find("\nvllm:num_requests_waiting{").unwrap();
            let full = parse_page(b, &d);
            let mut n = 0;
            for cut in cuts.clone().filter(|&c| c <= b.len()) {
                let s = parse_page(&b[..cut], &d);
                assert!(s.state.kv_cache_usage >= 0.0 && s.state.kv_cache_usage <= 1.0);
                assert!(s.stats.lines <= full.stats.lines);
                if cut <= waiting_at {
                    assert!(s.missing.contains(&"waiting"), "cut {cut}");
                }
                n += 1;
            }
            assert!(n > 1000);
            assert!(full.missing.is_empty());
        }
    }

    #[test]
    fn every_prefix_of_real_pages_parses() {
        let d = dialect(Engine::Vllm);
        let mut all = cuts(UNDER_LOAD, &d);
        all.extend(cuts(IDLE, &d));
        all.sort_unstable();
        all.dedup();
        check_prefixes(all.into_iter());
    }

    #[test]
    #[ignore]
    fn every_prefix_of_real_pages_exhaustive() {
        check_prefixes(0..=UNDER_LOAD.len().max(IDLE.len()));
    }

    #[test]
    fn truncated_value_is_not_a_reading() {
        let page = "vllm:num_requests_running{engine=\"0\"} 3\nvllm:kv_cache_usage_perc 0.5\n\
                    vllm:num_requests_waiting{engine=\"0\",model_name=\"m";
        let s = read(Engine::Vllm, page);
        assert_eq!(s.missing, vec!["waiting"]);
        assert_eq!(s.stats.garbage, 1);
        // Cut in the middle of the number: "12" of "123" is a value that parses; nothing in a
        // line tells it was cut, so the next scrape corrects it. Documented, not hidden.
        let s = read(Engine::Vllm, &page.replace("model_name=\"m", "x=\"y\"} 12"));
        assert_eq!(s.state.waiting, 12);
    }

    #[test]
    fn ten_megabytes_of_garbage_is_all_missing() {
        let mut page = Vec::with_capacity(10 << 20);
        let mut x: u32 = 12345;
        while page.len() < 10 << 20 {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            page.push((x >> 16) as u8);
        }
        for engine in [Engine::Vllm, Engine::TritonTrtllm] {
            let s = parse_page(&page, &dialect(engine));
            assert_eq!(s.missing, vec!["waiting", "running", "kvCacheUsage"]);
            assert_eq!(s.state, EndpointState::default());
        }
        let s = parse_page(b"", &dialect(Engine::Sglang));
        assert_eq!(s.missing.len(), 3);
        assert_eq!(s.stats, ParseStats::default());
    }

    #[test]
    fn vllm_v0_kv_fallback() {
        let v0 = "vllm:num_requests_waiting 1\nvllm:num_requests_running 2\n\
                  vllm:gpu_cache_usage_perc{model_name=\"m\"} 0.25\n";
        let s = read(Engine::Vllm, v0);
        assert!(s.missing.is_empty());
        assert!(approx(s.state.kv_cache_usage, 0.25));
        // Both names: v1 wins wherever it appears.
        let s = read(Engine::Vllm, &format!("vllm:kv_cache_usage_perc 0.5\n{v0}"));
        assert!(approx(s.state.kv_cache_usage, 0.5));
        // No lora / cache config lines: optional, unknown.
        assert_eq!(s.state.max_lora, None);
        assert_eq!(s.state.block_size, None);
    }

    #[test]
    fn lora_info_with_help_but_no_sample() {
        let page = "# HELP vllm:lora_requests_info Running stats on lora requests.\n\
                    # TYPE vllm:lora_requests_info gauge\n\
                    vllm:num_requests_waiting 0\nvllm:num_requests_running 0\n\
                    vllm:kv_cache_usage_perc 0\n";
        let s = read(Engine::Vllm, page);
        assert!(s.missing.is_empty());
        assert!(s.state.running_adapters.is_empty());
        assert!(s.state.waiting_adapters.is_empty());
        assert_eq!(s.state.max_lora, None);
    }

    #[test]
    fn lora_newest_series_wins_in_any_label_order() {
        let page = r#"vllm:lora_requests_info{waiting_lora_adapters="c",max_lora="4",running_lora_adapters="a, b"} 20
vllm:lora_requests_info{running_lora_adapters="old",max_lora="4",waiting_lora_adapters=""} 10
vllm:lora_requests_info{running_lora_adapters="nan",max_lora="4",waiting_lora_adapters=""} NaN
vllm:lora_requests_info{running_lora_adapters="inf",max_lora="4",waiting_lora_adapters=""} +Inf
vllm:lora_requests_info{running_lora_adapters="q\"uote,x",max_lora="None",waiting_lora_adapters=""} 5
"#;
        let s = read(Engine::Vllm, page);
        assert_eq!(s.state.running_adapters, vec!["a", "b"]);
        assert_eq!(s.state.waiting_adapters, vec!["c"]);
        assert_eq!(s.state.max_lora, Some(4));
        // Only the escaped series: its max_lora is "None".
        let s = read(Engine::Vllm, page.lines().last().unwrap());
        assert_eq!(s.state.running_adapters, vec!["q\"uote", "x"]);
        assert_eq!(s.state.max_lora, None);
    }

    #[test]
    fn several_engines_sum_counts_and_average_kv() {
        let page = r#"vllm:num_requests_waiting{engine="0"} 2
vllm:num_requests_waiting{engine="1"} 3
vllm:num_requests_running{engine="0"} 4
vllm:num_requests_running{engine="1"} 5
vllm:kv_cache_usage_perc{engine="0"} 0.2
vllm:kv_cache_usage_perc{engine="1"} 0.6
vllm:lora_requests_info{engine="0",max_lora="2",running_lora_adapters="a",waiting_lora_adapters="b"} 2
vllm:lora_requests_info{engine="0",max_lora="2",running_lora_adapters="old",waiting_lora_adapters=""} 1
vllm:lora_requests_info{engine="1",max_lora="3",running_lora_adapters="c,a",waiting_lora_adapters="b,a"} 1
vllm:cache_config_info{block_size="None",engine="0",num_gpu_blocks="None"} 1
vllm:cache_config_info{block_size="16",engine="1",num_gpu_blocks="4096.0"} 1
"#;
        let s = read(Engine::Vllm, page);
        assert!(s.missing.is_empty());
        assert_eq!((s.state.waiting, s.state.running), (5, 9));
        assert!(approx(s.state.kv_cache_usage, 0.4));
        // Newest per engine, united; "a" runs so it is not waiting.
        assert_eq!(s.state.running_adapters, vec!["a", "c"]);
        assert_eq!(s.state.waiting_adapters, vec!["b"]);
        assert_eq!(s.state.max_lora, Some(2));
        assert_eq!(s.state.block_size, Some(16));
        assert_eq!(s.state.num_gpu_blocks, Some(4096));
    }

    #[test]
    fn hostile_lora_series_stay_linear_and_bounded() {
        let mut page = String::new();
        for i in 0..20_000 {
            page.push_str(&format!(
                "vllm:lora_requests_info{{engine=\"{i}\",running_lora_adapters=\"a{i}\"}} 1\n"
            ));
        }
        let long: Vec<String> = (0..5000).map(|i| format!("x{i}")).collect();
        page.push_str(&format!(
            "vllm:lora_requests_info{{running_lora_adapters=\"{}\"}} 1\n",
            long.join(",")
        ));
        let s = read(Engine::Vllm, &page);
        assert_eq!(s.state.running_adapters.len(), MAX_LORA_ENGINES);
        let s = read(Engine::Vllm, page.lines().last().unwrap());
        assert_eq!(s.state.running_adapters.len(), MAX_ADAPTERS);
    }

    #[test]
    fn counts_nan_negative_inf_and_kv_clamping() {
        let base = "vllm:kv_cache_usage_perc 0.5\n";
        let s = read(
            Engine::Vllm,
            &format!("{base}vllm:num_requests_waiting NaN\nvllm:num_requests_running -3\n"),
        );
        assert_eq!(s.missing, vec!["waiting"]);
        assert_eq!(s.state.running, 0);
        let s = read(
            Engine::Vllm,
            &format!("{base}vllm:num_requests_waiting +Inf\nvllm:num_requests_running 1e12\n"),
        );
        assert_eq!((s.state.waiting, s.state.running), (u32::MAX, u32::MAX));
        let s = read(
            Engine::Vllm,
            "vllm:num_requests_waiting{a=\"1\"} NaN\nvllm:num_requests_waiting{a=\"2\"} 2.6\n\
             vllm:num_requests_running 1 1700000000000\nvllm:kv_cache_usage_perc 1.5\n",
        );
        assert!(s.missing.is_empty());
        assert_eq!((s.state.waiting, s.state.running), (3, 1));
        assert_eq!(s.state.kv_cache_usage, 1.0);
        for (kv, want) in [
            ("-0.2", Some(0.0)),
            ("-Inf", Some(0.0)),
            ("+Inf", Some(1.0)),
            ("NaN", None),
        ] {
            let s = read(
                Engine::Sglang,
                &format!(
                    "sglang:num_queue_reqs 0\nsglang:num_running_reqs 0\nsglang:token_usage {kv}\n"
                ),
            );
            match want {
                Some(w) => assert!(approx(s.state.kv_cache_usage, w) && s.missing.is_empty()),
                None => assert_eq!(s.missing, vec!["kvCacheUsage"]),
            }
        }
    }

    #[test]
    fn sglang() {
        let page = "# TYPE sglang:num_queue_reqs gauge\n\
                    sglang:num_queue_reqs{model_name=\"m\",engine_type=\"unified\"} 7.0\n\
                    sglang:num_running_reqs{model_name=\"m\",engine_type=\"unified\"} 12.0\n\
                    sglang:token_usage{model_name=\"m\",engine_type=\"unified\"} 0.42\n\
                    sglang:gen_throughput{model_name=\"m\"} 99.0\n\
                    vllm:num_requests_waiting 100\n";
        let s = read(Engine::Sglang, page);
        assert!(s.missing.is_empty());
        assert_eq!((s.state.waiting, s.state.running), (7, 12));
        assert!(approx(s.state.kv_cache_usage, 0.42));
        assert_eq!(s.state.max_lora, None);
        assert_eq!(s.stats.samples, 3);
    }

    #[test]
    fn trtllm_serve() {
        let page = "trtllm_num_requests_waiting{model_name=\"m\"} 1\r\n\
                    trtllm_num_requests_running{model_name=\"m\"} 2\r\n\
                    trtllm_kv_cache_utilization{model_name=\"m\"} 0.125\r\n";
        let s = read(Engine::TrtllmServe, page);
        assert!(s.missing.is_empty());
        assert_eq!((s.state.waiting, s.state.running), (1, 2));
        assert!(approx(s.state.kv_cache_usage, 0.125));
    }

    const TRITON: &str = r#"# HELP nv_trt_llm_request_metrics TRT LLM request metrics
# TYPE nv_trt_llm_request_metrics gauge
nv_trt_llm_request_metrics{model="tensorrt_llm",request_type="context",version="1"} 1
nv_trt_llm_request_metrics{model="tensorrt_llm",request_type="scheduled",version="1"} 6
nv_trt_llm_request_metrics{model="tensorrt_llm",request_type="max",version="1"} 512
nv_trt_llm_request_metrics{model="tensorrt_llm",request_type="active",version="1"} 8
nv_trt_llm_request_metrics{model="tensorrt_llm",request_type="waiting",version="1"} 2
nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type="max",model="tensorrt_llm",version="1"} 4096
nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type="used",model="tensorrt_llm",version="1"} 1024
nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type="fraction",model="tensorrt_llm",version="1"} 0.25
"#;

    #[test]
    fn triton_trtllm() {
        let s = read(Engine::TritonTrtllm, TRITON);
        assert!(s.missing.is_empty());
        assert_eq!((s.state.waiting, s.state.running), (2, 6));
        assert!(approx(s.state.kv_cache_usage, 0.25));
        // The vLLM names mean nothing to this dialect.
        let s = read(Engine::TritonTrtllm, UNDER_LOAD);
        assert_eq!(s.missing.len(), 3);
    }

    #[test]
    fn vllm_ascend_kv_from_blocks() {
        let counts = "vllm:num_requests_waiting 0\nvllm:num_requests_running 1\n";
        let cases = [
            // free, total, usage metric → expected KV
            ("300", "1000", Some("0.9"), Some(0.7)),
            ("300", "1000", None, Some(0.7)),
            ("1200", "1000", None, Some(0.0)),
            ("0", "0", Some("0.9"), Some(0.9)),
            ("NaN", "1000", Some("0.9"), Some(0.9)),
            ("300", "NaN", Some("0.9"), Some(0.9)),
            ("300", "+Inf", Some("0.9"), Some(0.9)),
            ("+Inf", "1000", Some("0.9"), Some(0.9)),
            ("0", "0", None, None),
        ];
        for (free, total, usage, want) in cases {
            let mut page = format!(
                "{counts}vllm_profiling_free_kvcache_blocks {free}\n\
                 vllm_profiling_total_kvcache_blocks {total}\n"
            );
            if let Some(u) = usage {
                page.push_str(&format!("vllm:kv_cache_usage_perc {u}\n"));
            }
            let s = read(Engine::VllmAscend, &page);
            match want {
                Some(w) => assert!(approx(s.state.kv_cache_usage, w), "{free}/{total}: {s:?}"),
                None => assert_eq!(s.missing, vec!["kvCacheUsage"]),
            }
        }
        // Without the profiling metrics it is plain vLLM.
        let s = read(Engine::VllmAscend, UNDER_LOAD);
        assert_eq!(s.state, read(Engine::Vllm, UNDER_LOAD).state);
        // Plain vLLM does not look at the block metrics.
        let s = read(
            Engine::Vllm,
            &format!("{counts}vllm_profiling_free_kvcache_blocks 0\nvllm_profiling_total_kvcache_blocks 10\n"),
        );
        assert_eq!(s.missing, vec!["kvCacheUsage"]);
    }

    #[test]
    fn overrides_rename_and_reselect() {
        let d = Dialect::new(
            Engine::Vllm,
            &overrides(&[
                ("waiting", "my:queue"),
                ("kvCacheUsage", "my_kv{kind=\"gpu\"}"),
            ]),
        )
        .unwrap();
        let page = "my:queue 4\nvllm:num_requests_waiting 99\nvllm:num_requests_running 1\n\
                    my_kv{kind=\"cpu\"} 0.9\nmy_kv{kind=\"gpu\"} 0.3\nvllm:gpu_cache_usage_perc 0.8\n";
        let s = parse_page(page.as_bytes(), &d);
        assert!(s.missing.is_empty());
        assert_eq!(s.state.waiting, 4);
        assert!(approx(s.state.kv_cache_usage, 0.3));
        // Overriding kvCacheUsage drops the v0 fallback.
        let s = parse_page(
            b"my:queue 4\nvllm:num_requests_running 1\nvllm:gpu_cache_usage_perc 0.8\n",
            &d,
        );
        assert_eq!(s.missing, vec!["kvCacheUsage"]);
        assert!(!d.wants("vllm:gpu_cache_usage_perc") && !d.wants("vllm:num_requests_waiting"));
    }

    #[test]
    fn override_with_a_bare_name_keeps_the_label_matchers() {
        let d = Dialect::new(
            Engine::TritonTrtllm,
            &overrides(&[("waiting", "my_requests")]),
        )
        .unwrap();
        let page = TRITON.to_string()
            + "my_requests{request_type=\"waiting\"} 3\nmy_requests{request_type=\"other\"} 50\n";
        let s = parse_page(page.as_bytes(), &d);
        assert_eq!((s.state.waiting, s.state.running), (3, 6));
        // `name{}` drops them: every series counts.
        let d = Dialect::new(
            Engine::TritonTrtllm,
            &overrides(&[("waiting", "my_requests{}")]),
        )
        .unwrap();
        assert_eq!(parse_page(page.as_bytes(), &d).state.waiting, 53);
    }

    #[test]
    fn optional_keys_can_be_added_to_any_engine() {
        let d = Dialect::new(
            Engine::Sglang,
            &overrides(&[
                ("loraInfo", "vllm:lora_requests_info"),
                ("cacheConfig", "cfg"),
                ("kvBlocksFree", "free"),
                ("kvBlocksTotal", "total"),
            ]),
        )
        .unwrap();
        let page = "sglang:num_queue_reqs 0\nsglang:num_running_reqs 0\nsglang:token_usage 0.9\n\
                    free 25\ntotal 100\ncfg{block_size=\"32\"} 1\n\
                    vllm:lora_requests_info{max_lora=\"1\",running_lora_adapters=\"z\"} 1\n";
        let s = parse_page(page.as_bytes(), &d);
        assert!(s.missing.is_empty());
        assert!(approx(s.state.kv_cache_usage, 0.75));
        assert_eq!(s.state.block_size, Some(32));
        assert_eq!(s.state.num_gpu_blocks, None);
        assert_eq!(s.state.running_adapters, vec!["z"]);
        assert_eq!(s.state.max_lora, Some(1));
    }

    #[test]
    fn override_errors_name_the_key() {
        let e = Dialect::new(Engine::Vllm, &overrides(&[("queue", "x")])).unwrap_err();
        assert!(e.contains("\"queue\"") && e.contains("kvCacheUsage"), "{e}");
        for bad in ["", "1x", "x y", "x{a=b}", "x{a=\"b\"", "x{a=\"b\"}z"] {
            let e = Dialect::new(Engine::Sglang, &overrides(&[("running", bad)])).unwrap_err();
            assert!(e.starts_with("running: "), "{e}");
        }
        // Keys are camelCase only.
        assert!(Dialect::new(Engine::Vllm, &overrides(&[("kv_cache_usage", "x")])).is_err());
    }

    #[test]
    fn one_series_can_feed_two_keys() {
        let d = Dialect::new(
            Engine::TrtllmServe,
            &overrides(&[("waiting", "reqs{}"), ("running", "reqs{}")]),
        )
        .unwrap();
        assert_eq!(d.metric_names().filter(|n| *n == "reqs").count(), 1);
        let s = parse_page(b"reqs 2\ntrtllm_kv_cache_utilization 0\n", &d);
        assert_eq!((s.state.waiting, s.state.running), (2, 2));
        assert_eq!(d.engine(), Engine::TrtllmServe);
    }

    /// `cargo test --release -p inference-router-core bench_real_page_parse -- --ignored --nocapture`
    #[cfg(not(target_arch = "wasm32"))]
    #[test]
    #[ignore]
    fn bench_real_page_parse() {
        use std::hint::black_box;
        use std::time::Instant;
        let d = dialect(Engine::Vllm);
        let page = UNDER_LOAD.as_bytes();
        for _ in 0..100 {
            black_box(parse_page(black_box(page), &d));
        }
        // 1,000 parses in 10 batches: the mean, and the best batch (less disturbed by whatever
        // else the machine is doing).
        let (mut total, mut best) = (0.0, f64::MAX);
        for _ in 0..10 {
            let t = Instant::now();
            for _ in 0..100 {
                black_box(parse_page(black_box(page), &d));
            }
            let batch = t.elapsed().as_secs_f64() * 1e6 / 100.0;
            total += batch;
            best = best.min(batch);
        }
        let mean = total / 10.0;
        println!(
            "parse_page(vLLM 0.32 page, {} bytes, {} lines): {mean:.2} µs per page over 1000 \
             iterations (best batch of 100: {best:.2} µs, {:.0} MB/s)",
            page.len(),
            UNDER_LOAD.lines().count(),
            page.len() as f64 / best
        );
    }
}
