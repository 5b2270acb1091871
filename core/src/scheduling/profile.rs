//! A profile: one filter → scorers → picker pipeline with its weights and thresholds, and the
//! `"scheduling"` configuration object it is built from.

use super::Strategy;
use serde::Deserialize;

/// Scorer weights. A weight of 0 turns a scorer off; the sum is what the picker maximises.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Weights {
    pub queue: f64,
    pub kv_cache: f64,
    pub lora_affinity: f64,
    /// Used by PREFIX_CACHE only.
    pub prefix: f64,
    pub in_flight: f64,
}

impl Default for Weights {
    /// Queue 2, KV cache 2, prefix 3 are the Inference Extension's. In-flight 1 is ours: it decides
    /// among endpoints of equal load. LoRA affinity 4 is ours too, and large because its 0 (a new
    /// adapter on an endpoint whose slots are taken) costs a wait of whole requests, not a place
    /// in a queue: 0.8 × 4 (a free slot) outweighs queue + in-flight (3) at their widest, while
    /// running versus a free slot (0.2 × 4) is worth two queued requests. Measured with
    /// `sched-bench` (zipf and random adapter workloads): 3–4 best, 1–2 and 6–10 worse.
    fn default() -> Self {
        Weights {
            queue: 2.0,
            kv_cache: 2.0,
            lora_affinity: 4.0,
            prefix: 3.0,
            in_flight: 1.0,
        }
    }
}

/// An endpoint has headroom when its scraped queue and KV use are both within these; the pool is
/// saturated when no fresh endpoint has headroom.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Saturation {
    pub queue_depth: u32,
    pub kv_cache_usage: f32,
    /// `flowControl` is on: the queue holds requests until an endpoint has room
    /// (`filters::has_room`), the pick sends them only where there is room and sheds nothing.
    pub flow_control: bool,
}

impl Default for Saturation {
    /// The Inference Extension's: queue ≤ 5 and KV ≤ 0.8.
    fn default() -> Self {
        Saturation {
            queue_depth: 5,
            kv_cache_usage: 0.8,
            flow_control: false,
        }
    }
}

/// Prompt hashing and prefix-index sizes (PREFIX_CACHE).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrefixSettings {
    /// Bytes per hashed block. 64 bytes ≈ 16 tokens, vLLM's default KV block.
    pub block_size: usize,
    /// Blocks hashed per prompt at most (256 × 64 bytes = the first 16 KiB of the prompt).
    pub max_blocks: usize,
    /// Block hashes remembered per endpoint. 31,250 × 64 bytes ≈ 500k tokens, a large GPU's KV
    /// cache; costs 4 bytes each, so ≈ 122 KiB per endpoint once it has been routed to.
    pub capacity: usize,
}

impl Default for PrefixSettings {
    fn default() -> Self {
        PrefixSettings {
            block_size: 64,
            max_blocks: 256,
            capacity: 31_250,
        }
    }
}

pub const MAX_BLOCK_SIZE: usize = 65_536;
/// The export format counts blocks in a u16; 4096 blocks of 64 bytes is already 256 KiB of prompt.
pub const MAX_BLOCKS: usize = 4096;
/// 2^24 blocks = 64 MiB per endpoint: beyond any KV cache and a guard against typos.
pub const MAX_CAPACITY: usize = 1 << 24;

/// The runtime form of a scheduling profile.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Profile {
    pub strategy: Strategy,
    pub weights: Weights,
    pub saturation: Saturation,
    pub prefix: PrefixSettings,
}

impl Default for Profile {
    fn default() -> Self {
        Profile::new(Strategy::Default)
    }
}

/// The `"scheduling"` object of the configuration document. Every field is optional; absent ones
/// take the defaults above. `strategy` is here so this struct can be the whole object; it is
/// parsed by `Strategy::parse` and passed to `Profile::from_config` separately.
// With the core's `schema` feature these derive the `scheduling` part of the document's JSON
// Schema (see `config::json_schema`); the doc comments are its descriptions.
#[derive(Debug, Clone, Default, Deserialize)]
#[cfg_attr(
    feature = "schema",
    derive(schemars::JsonSchema),
    schemars(rename = "Scheduling")
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SchedulingConfig {
    /// `DEFAULT` (from scraped metrics; default), `PREFIX_CACHE` (`DEFAULT` plus prefix
    /// affinity), `LEAST_REQUEST`, `ROUND_ROBIN` or `RANDOM`.
    #[cfg_attr(
        feature = "schema",
        schemars(extend("enum" = ["DEFAULT", "PREFIX_CACHE", "LEAST_REQUEST", "ROUND_ROBIN", "RANDOM", null]))
    )]
    pub strategy: Option<String>,
    /// Scorer weights (≥ 0; 0 turns a scorer off).
    pub scorers: Option<ScorersConfig>,
    /// When an endpoint has headroom; a pool with none is saturated.
    pub saturation: Option<SaturationConfig>,
    /// `PREFIX_CACHE`'s prompt hashing and index size.
    pub prefix: Option<PrefixConfig>,
}

/// Scorer weights (each ≥ 0).
#[derive(Debug, Clone, Default, Deserialize)]
#[cfg_attr(
    feature = "schema",
    derive(schemars::JsonSchema),
    schemars(rename = "Scorers")
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ScorersConfig {
    /// Waiting requests (default 2).
    #[cfg_attr(feature = "schema", schemars(range(min = 0)))]
    pub queue: Option<f64>,
    /// KV-cache use (default 2).
    #[cfg_attr(feature = "schema", schemars(range(min = 0)))]
    pub kv_cache: Option<f64>,
    /// The target adapter loaded or loadable (default 4).
    #[cfg_attr(feature = "schema", schemars(range(min = 0)))]
    pub lora_affinity: Option<f64>,
    /// Prompt prefix already sent there (`PREFIX_CACHE`; default 3).
    #[cfg_attr(feature = "schema", schemars(range(min = 0)))]
    pub prefix: Option<f64>,
    /// This gateway's requests in flight there (default 1).
    #[cfg_attr(feature = "schema", schemars(range(min = 0)))]
    pub in_flight: Option<f64>,
}

/// Headroom thresholds.
// Integers are signed so a negative value gets our message rather than serde's.
#[derive(Debug, Clone, Default, Deserialize)]
#[cfg_attr(
    feature = "schema",
    derive(schemars::JsonSchema),
    schemars(rename = "Saturation")
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SaturationConfig {
    /// At most this many waiting requests (default 5).
    #[cfg_attr(feature = "schema", schemars(range(min = 0, max = 4294967295u32)))]
    pub queue_depth: Option<i64>,
    /// At most this KV-cache use, 0 to 1 (default 0.8).
    #[cfg_attr(feature = "schema", schemars(range(min = 0, max = 1)))]
    pub kv_cache_usage: Option<f64>,
}

/// Prompt hashing and prefix-index sizes (`PREFIX_CACHE`).
#[derive(Debug, Clone, Default, Deserialize)]
#[cfg_attr(
    feature = "schema",
    derive(schemars::JsonSchema),
    schemars(rename = "Prefix")
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PrefixConfig {
    /// Bytes per hashed block (default 64).
    #[cfg_attr(feature = "schema", schemars(range(min = 1, max = 65536)))]
    pub block_size: Option<i64>,
    /// Blocks hashed per prompt at most (default 256).
    #[cfg_attr(feature = "schema", schemars(range(min = 1, max = 4096)))]
    pub max_blocks: Option<i64>,
    /// Block hashes remembered per endpoint (default 31250).
    #[cfg_attr(feature = "schema", schemars(range(min = 1, max = 16777216)))]
    pub capacity: Option<i64>,
}

type FieldError = (String, String);

fn weight(field: &str, v: Option<f64>, default: f64) -> Result<f64, FieldError> {
    match v {
        None => Ok(default),
        Some(w) if w.is_finite() && w >= 0.0 => Ok(w),
        Some(w) => Err((
            format!("scorers.{field}"),
            format!("{w} is not a weight: must be a number ≥ 0"),
        )),
    }
}

fn size(field: &str, v: Option<i64>, default: usize, max: usize) -> Result<usize, FieldError> {
    match v {
        None => Ok(default),
        Some(n) if n >= 1 && (n as u64) <= max as u64 => Ok(n as usize),
        Some(n) => Err((
            format!("prefix.{field}"),
            format!("{n} is out of range: must be between 1 and {max}"),
        )),
    }
}

impl Profile {
    /// The defaults for `strategy`.
    pub fn new(strategy: Strategy) -> Profile {
        Profile {
            strategy,
            weights: Weights::default(),
            saturation: Saturation::default(),
            prefix: PrefixSettings::default(),
        }
    }

    /// Build a profile from the configuration object. An error is (field path relative to
    /// `"scheduling"`, message). Prefix settings are accepted, and ignored, under other strategies.
    pub fn from_config(strategy: Strategy, c: &SchedulingConfig) -> Result<Profile, FieldError> {
        let d = Profile::new(strategy);
        let s = c.scorers.clone().unwrap_or_default();
        let weights = Weights {
            queue: weight("queue", s.queue, d.weights.queue)?,
            kv_cache: weight("kvCache", s.kv_cache, d.weights.kv_cache)?,
            lora_affinity: weight("loraAffinity", s.lora_affinity, d.weights.lora_affinity)?,
            prefix: weight("prefix", s.prefix, d.weights.prefix)?,
            in_flight: weight("inFlight", s.in_flight, d.weights.in_flight)?,
        };

        let sat = c.saturation.clone().unwrap_or_default();
        let queue_depth = match sat.queue_depth {
            None => d.saturation.queue_depth,
            Some(n) => u32::try_from(n).map_err(|_| {
                (
                    "saturation.queueDepth".to_string(),
                    format!("{n} is out of range: must be between 0 and {}", u32::MAX),
                )
            })?,
        };
        let kv_cache_usage = match sat.kv_cache_usage {
            None => d.saturation.kv_cache_usage,
            Some(u) if (0.0..=1.0).contains(&u) => u as f32,
            Some(u) => {
                return Err((
                    "saturation.kvCacheUsage".to_string(),
                    format!("{u} is not a fraction between 0 and 1"),
                ))
            }
        };

        let p = c.prefix.clone().unwrap_or_default();
        let prefix = PrefixSettings {
            block_size: size(
                "blockSize",
                p.block_size,
                d.prefix.block_size,
                MAX_BLOCK_SIZE,
            )?,
            max_blocks: size("maxBlocks", p.max_blocks, d.prefix.max_blocks, MAX_BLOCKS)?,
            capacity: size("capacity", p.capacity, d.prefix.capacity, MAX_CAPACITY)?,
        };

        Ok(Profile {
            strategy,
            weights,
            saturation: Saturation {
                queue_depth,
                kv_cache_usage,
                flow_control: false,
            },
            prefix,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn cfg(json: &str) -> SchedulingConfig {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn empty_config_gives_the_defaults() {
        let p = Profile::from_config(Strategy::PrefixCache, &cfg("{}")).unwrap();
        assert_eq!(p, Profile::new(Strategy::PrefixCache));
        assert_eq!(
            (p.weights.queue, p.weights.kv_cache, p.weights.prefix),
            (2.0, 2.0, 3.0)
        );
        assert_eq!(p.saturation.queue_depth, 5);
        assert_eq!(p.saturation.kv_cache_usage, 0.8);
        assert_eq!(p.prefix.block_size, 64);
    }

    #[test]
    fn every_field_is_read() {
        let c = cfg(r#"{"strategy":"PREFIX_CACHE",
            "scorers":{"queue":1,"kvCache":0.5,"loraAffinity":0,"prefix":4,"inFlight":2},
            "saturation":{"queueDepth":10,"kvCacheUsage":0.9},
            "prefix":{"blockSize":32,"maxBlocks":128,"capacity":1000}}"#);
        let p = Profile::from_config(Strategy::PrefixCache, &c).unwrap();
        assert_eq!(
            p.weights,
            Weights {
                queue: 1.0,
                kv_cache: 0.5,
                lora_affinity: 0.0,
                prefix: 4.0,
                in_flight: 2.0
            }
        );
        assert_eq!(p.saturation.queue_depth, 10);
        assert_eq!(p.saturation.kv_cache_usage, 0.9);
        assert_eq!(
            p.prefix,
            PrefixSettings {
                block_size: 32,
                max_blocks: 128,
                capacity: 1000
            }
        );
    }

    #[test]
    fn bad_values_name_their_field() {
        let cases = [
            (r#"{"scorers":{"queue":-1}}"#, "scorers.queue"),
            (r#"{"scorers":{"inFlight":-0.5}}"#, "scorers.inFlight"),
            (
                r#"{"saturation":{"queueDepth":-1}}"#,
                "saturation.queueDepth",
            ),
            (
                r#"{"saturation":{"kvCacheUsage":1.5}}"#,
                "saturation.kvCacheUsage",
            ),
            (r#"{"prefix":{"blockSize":0}}"#, "prefix.blockSize"),
            (r#"{"prefix":{"maxBlocks":5000}}"#, "prefix.maxBlocks"),
            (r#"{"prefix":{"capacity":-3}}"#, "prefix.capacity"),
        ];
        for (doc, field) in cases {
            let e = Profile::from_config(Strategy::Default, &cfg(doc)).unwrap_err();
            assert_eq!(e.0, field, "{doc}: {e:?}");
            assert!(!e.1.is_empty());
        }
    }

    #[test]
    fn unknown_fields_are_refused() {
        assert!(serde_json::from_str::<SchedulingConfig>(r#"{"scorers":{"queu":1}}"#).is_err());
        assert!(serde_json::from_str::<SchedulingConfig>(r#"{"weights":{}}"#).is_err());
    }
}
