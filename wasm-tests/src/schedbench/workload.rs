//! The benchmark's workloads: request sequences drawn once from a fixed seed, so every strategy
//! serves exactly the same requests in the same order.
//!
//! Token counts follow the simulator's tokenizer (four prompt bytes per token, see
//! `sim::openai`): a prompt of `n` tokens is `4 n` bytes of lowercase words.

/// A small, fast, seeded generator (SplitMix64): the workloads must not depend on a crate's
/// sequence changing between versions.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform integer in [lo, hi].
    pub fn range(&mut self, lo: u32, hi: u32) -> u32 {
        lo + (self.next_u64() % u64::from(hi - lo + 1)) as u32
    }

    /// Exponential with mean `mean`.
    pub fn exp(&mut self, mean: f64) -> f64 {
        -mean * (1.0 - self.unit()).ln()
    }

    /// An index drawn with the given weights.
    pub fn weighted(&mut self, weights: &[f64]) -> usize {
        let total: f64 = weights.iter().sum();
        let mut x = self.unit() * total;
        for (i, w) in weights.iter().enumerate() {
            if x < *w {
                return i;
            }
            x -= w;
        }
        weights.len().saturating_sub(1)
    }

    /// `tokens` tokens of text: random lowercase words, exactly `4 × tokens` bytes.
    pub fn text(&mut self, tokens: u32) -> String {
        let len = tokens as usize * 4;
        let mut s = String::with_capacity(len);
        while s.len() < len {
            let word = 2 + (self.next_u64() % 8) as usize;
            for _ in 0..word.min(len - s.len()) {
                s.push(char::from(b'a' + (self.next_u64() % 26) as u8));
            }
            if s.len() < len {
                s.push(' ');
            }
        }
        s
    }
}

/// One request: what the client sends.
#[derive(Debug, Clone)]
pub struct Request {
    /// The adapter (or base model) the request names.
    pub model: String,
    pub prompt: String,
    pub max_tokens: u32,
    /// Simulated seconds after the start at which an open-loop workload sends it.
    pub at_s: f64,
    /// The overload workload's priority class (`critical`, `standard`, `sheddable`; "" elsewhere).
    pub class: &'static str,
    /// The tenant it is sent for (`x-gateway-inference-fairness-id`), if any.
    pub tenant: Option<&'static str>,
}

/// How requests are sent.
#[derive(Debug, Clone, Copy)]
pub enum Arrivals {
    /// Closed loop: this many requests in flight, the next one sent when one finishes.
    Closed { concurrency: usize },
    /// Open loop: each request at its `at_s` (Poisson arrivals), whatever is still in flight.
    Open { rate_per_s: f64 },
}

pub struct Workload {
    pub key: &'static str,
    pub title: String,
    pub description: String,
    pub arrivals: Arrivals,
    pub requests: Vec<Request>,
}

/// Sizes of one run of the three workloads (the full run and `--quick`).
#[derive(Debug, Clone, Copy)]
pub struct Scale {
    /// Workloads (a) and (c): prompts and concurrency.
    pub random_prompts: usize,
    pub random_concurrency: usize,
    /// Workload (b): groups (5 prompts each) and the arrival rate.
    pub prefix_groups: usize,
    pub prefix_rate: f64,
}

/// vLLM benchmark_serving's "random" dataset lengths: uniform in `len × [1 − r, 1 + r]`.
fn around(rng: &mut Rng, len: u32, ratio: f64) -> u32 {
    let lo = (f64::from(len) * (1.0 - ratio)).round() as u32;
    let hi = (f64::from(len) * (1.0 + ratio)).round() as u32;
    rng.range(lo.max(1), hi.max(1))
}

/// Zipf weights 1 / rank^s for `n` ranks.
pub fn zipf_weights(n: usize, s: f64) -> Vec<f64> {
    (1..=n).map(|k| 1.0 / (k as f64).powf(s)).collect()
}

pub const RANDOM_INPUT: u32 = 1550;
pub const RANDOM_OUTPUT: u32 = 1800;
pub const RANGE_RATIO: f64 = 0.2;
pub const ZIPF_S: f64 = 1.2;
/// llm-d's shared-prefix workload (6,000-token system prompt, 1,200-token question, 1,000 output
/// tokens) scaled by this factor so one request fits the simulated model's 4,096-token context.
pub const PREFIX_SCALE: f64 = 0.48;
pub const PREFIX_SYSTEM: u32 = 6000;
pub const PREFIX_QUESTION: u32 = 1200;
pub const PREFIX_OUTPUT: u32 = 1000;
pub const PROMPTS_PER_GROUP: usize = 5;

fn random_requests(rng: &mut Rng, n: usize, adapters: &[String], weights: &[f64]) -> Vec<Request> {
    (0..n)
        .map(|_| {
            let input = around(rng, RANDOM_INPUT, RANGE_RATIO);
            let output = around(rng, RANDOM_OUTPUT, RANGE_RATIO);
            let model = adapters
                .get(rng.weighted(weights))
                .cloned()
                .unwrap_or_default();
            Request {
                model,
                prompt: rng.text(input),
                max_tokens: output,
                at_s: 0.0,
                class: "",
                tenant: None,
            }
        })
        .collect()
}

/// (a): random lengths, the adapters equally popular (the canary example's weights, 10 each).
pub fn random(scale: &Scale, adapters: &[String]) -> Workload {
    let mut rng = Rng::new(0xA);
    let weights = vec![1.0; adapters.len()];
    Workload {
        key: "random",
        title: "(a) random".to_string(),
        description: format!(
            "{} prompts, {RANDOM_INPUT} in / {RANDOM_OUTPUT} out tokens, range ratio {RANGE_RATIO}, \
             {} adapters equally likely, closed loop at concurrency {}",
            scale.random_prompts,
            adapters.len(),
            scale.random_concurrency
        ),
        arrivals: Arrivals::Closed {
            concurrency: scale.random_concurrency,
        },
        requests: random_requests(&mut rng, scale.random_prompts, adapters, &weights),
    }
}

/// (c): the lengths of (a), adapter popularity Zipf-skewed (rank k has weight 1 / k^s).
pub fn zipf(scale: &Scale, adapters: &[String]) -> Workload {
    let mut rng = Rng::new(0xC);
    let weights = zipf_weights(adapters.len(), ZIPF_S);
    let total: f64 = weights.iter().sum();
    let top = weights.first().map_or(0.0, |w| w / total);
    Workload {
        key: "zipf",
        title: "(c) Zipf adapters".to_string(),
        description: format!(
            "{} prompts, lengths as (a), adapter of rank k drawn with weight 1/k^{ZIPF_S} \
             (the most popular {:.0}% of requests), closed loop at concurrency {}",
            scale.random_prompts,
            top * 100.0,
            scale.random_concurrency
        ),
        arrivals: Arrivals::Closed {
            concurrency: scale.random_concurrency,
        },
        requests: random_requests(&mut rng, scale.random_prompts, adapters, &weights),
    }
}

/// (b): groups sharing a long system prompt, each with its own questions; Poisson arrivals in a
/// random order over the groups.
pub fn shared_prefix(scale: &Scale, base_model: &str) -> Workload {
    let mut rng = Rng::new(0xB);
    let scaled = |t: u32| (f64::from(t) * PREFIX_SCALE).round() as u32;
    let (system, question, output) = (
        scaled(PREFIX_SYSTEM),
        scaled(PREFIX_QUESTION),
        scaled(PREFIX_OUTPUT),
    );
    let systems: Vec<String> = (0..scale.prefix_groups).map(|_| rng.text(system)).collect();
    let mut order: Vec<usize> = (0..scale.prefix_groups * PROMPTS_PER_GROUP)
        .map(|i| i / PROMPTS_PER_GROUP)
        .collect();
    // Fisher–Yates: the groups' prompts interleave as independent users' would.
    for i in (1..order.len()).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        order.swap(i, j);
    }
    let mut t = 0.0;
    let requests = order
        .into_iter()
        .map(|g| {
            t += rng.exp(1.0 / scale.prefix_rate);
            let mut prompt = systems.get(g).cloned().unwrap_or_default();
            prompt.push(' ');
            // One token less than `question`: the joining space is four bytes short of a token.
            prompt.push_str(&rng.text(question));
            prompt.truncate(4 * (system + question) as usize);
            Request {
                model: base_model.to_string(),
                prompt,
                max_tokens: output,
                at_s: t,
                class: "",
                tenant: None,
            }
        })
        .collect();
    Workload {
        key: "prefix",
        title: "(b) shared prefix".to_string(),
        description: format!(
            "{} groups × {PROMPTS_PER_GROUP} prompts: {system}-token system prompt shared in a group, \
             {question}-token question, {output} output tokens (llm-d's 6,000 / 1,200 / 1,000 × \
             {PREFIX_SCALE} to fit a 4,096-token context), Poisson arrivals at {} requests/s",
            scale.prefix_groups, scale.prefix_rate
        ),
        arrivals: Arrivals::Open {
            rate_per_s: scale.prefix_rate,
        },
        requests,
    }
}

/// The overload workload's served names (`Setup::plugin_config`), one per priority class.
pub const OVERLOAD_MODELS: [(&str, &str); 3] = [
    ("critical", "critical-chat"),
    ("standard", "standard-chat"),
    ("sheddable", "sheddable-batch"),
];
pub const OVERLOAD_INPUT: u32 = 500;
pub const OVERLOAD_OUTPUT: u32 = 200;
/// Shares of the arrivals: Critical, Standard, Sheddable.
pub const OVERLOAD_MIX: [f64; 3] = [0.1, 0.4, 0.5];
/// Standard traffic comes from two tenants, one sending ten times as much as the other.
pub const OVERLOAD_TENANTS: [(&str, f64); 2] = [("aggressive", 10.0), ("modest", 1.0)];

/// (d): Poisson arrivals at `rate` requests/s (simulated) — set it to twice what the pool
/// sustains — for `duration_s`: a tenth Critical, four tenths Standard from two tenants at 10:1,
/// half Sheddable.
pub fn overload(rate: f64, duration_s: f64) -> Workload {
    let mut rng = Rng::new(0xD);
    let mut t = 0.0;
    let mut requests = Vec::new();
    loop {
        t += rng.exp(1.0 / rate);
        if t > duration_s {
            break;
        }
        let class = rng.weighted(&OVERLOAD_MIX);
        let (class, model) = OVERLOAD_MODELS.get(class).copied().unwrap_or(("", ""));
        let tenant = (class == "standard").then(|| {
            let w: Vec<f64> = OVERLOAD_TENANTS.iter().map(|t| t.1).collect();
            OVERLOAD_TENANTS.get(rng.weighted(&w)).map_or("", |t| t.0)
        });
        let input = around(&mut rng, OVERLOAD_INPUT, RANGE_RATIO);
        let output = around(&mut rng, OVERLOAD_OUTPUT, RANGE_RATIO);
        requests.push(Request {
            model: model.to_string(),
            prompt: rng.text(input),
            max_tokens: output,
            at_s: t,
            class,
            tenant,
        });
    }
    Workload {
        key: "overload",
        title: "(d) overload".to_string(),
        description: format!(
            "Poisson arrivals at {rate} requests/s for {duration_s} s ({} requests), twice what the pool sustains: \
             10% Critical, 40% Standard (two tenants at 10:1), 50% Sheddable; {OVERLOAD_INPUT} in / \
             {OVERLOAD_OUTPUT} out tokens, range ratio {RANGE_RATIO}",
            requests.len()
        ),
        arrivals: Arrivals::Open { rate_per_s: rate },
        requests,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_has_the_exact_token_length() {
        let mut rng = Rng::new(1);
        for n in [1, 7, 1550, 2880] {
            let t = rng.text(n);
            assert_eq!(t.len(), 4 * n as usize);
            assert!(t.bytes().all(|b| b == b' ' || b.is_ascii_lowercase()));
        }
    }

    #[test]
    fn shared_prefix_groups_share_their_system_prompt() {
        let scale = Scale {
            random_prompts: 0,
            random_concurrency: 1,
            prefix_groups: 3,
            prefix_rate: 10.0,
        };
        let w = shared_prefix(&scale, "base");
        assert_eq!(w.requests.len(), 15);
        let sys = 4 * (f64::from(PREFIX_SYSTEM) * PREFIX_SCALE).round() as usize;
        let mut prefixes: Vec<&str> = w.requests.iter().map(|r| &r.prompt[..sys]).collect();
        prefixes.sort_unstable();
        prefixes.dedup();
        assert_eq!(prefixes.len(), 3);
        assert!(w.requests.windows(2).all(|p| p[0].at_s < p[1].at_s));
    }

    #[test]
    fn zipf_favours_the_first_adapter() {
        let adapters: Vec<String> = (0..10).map(|i| format!("a{i}")).collect();
        let scale = Scale {
            random_prompts: 2000,
            random_concurrency: 1,
            prefix_groups: 0,
            prefix_rate: 1.0,
        };
        let w = zipf(&scale, &adapters);
        let first = w.requests.iter().filter(|r| r.model == "a0").count();
        let last = w.requests.iter().filter(|r| r.model == "a9").count();
        assert!(first > 5 * last, "{first} vs {last}");
    }
}
