//! Endpoint scheduling, in the Gateway API Inference Extension's vocabulary: **filters** narrow the
//! candidates (`filters`), **scorers** give each candidate a value in [0, 1] (`scorers`), combined
//! with the **profile**'s weights (`profile`), and a **picker** chooses the maximum with a random
//! tie-break (`picker`). `schedule` runs one profile for one request; `prefix` holds the prompt
//! hashing and the per-endpoint prefix index of the PREFIX_CACHE strategy.
//!
//! The load-only strategies (ROUND_ROBIN, RANDOM, LEAST_REQUEST) keep their own small pickers,
//! which need no metrics.

pub mod claims;
mod filters;
mod picker;
pub mod prefix;
pub mod prefix_share;
mod profile;
mod schedule;
pub mod scorers;
pub mod worker;

pub use claims::{adapter_hash, AdapterClaims, Claim, CLAIMS_PER_ENDPOINT, ENCODED_LEN};
pub use filters::{has_headroom, has_room, has_spare_room, is_fresh};
pub use picker::{least_request, random, round_robin, MaxPicker};
pub use prefix::{endpoint_id, prefix_hashes, ImportError, PrefixIndex, PREFIX_BUDGET_BLOCKS};
pub use profile::{
    PrefixConfig, PrefixSettings, Profile, Saturation, SaturationConfig, SchedulingConfig,
    ScorersConfig, Weights,
};
pub use schedule::{
    explain, schedule, schedule_claiming, Candidate, Decision, SchedulingRequest, Scores,
    TargetKind,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    RoundRobin,
    Random,
    /// Fewest in-flight requests, counted across all of Envoy's workers.
    LeastRequest,
    /// Metrics-based: queue, KV cache, LoRA affinity and in-flight scorers.
    Default,
    /// DEFAULT plus the prefix-cache scorer.
    PrefixCache,
}

impl Strategy {
    pub fn parse(s: &str) -> Result<Strategy, String> {
        match s {
            "ROUND_ROBIN" => Ok(Strategy::RoundRobin),
            "RANDOM" => Ok(Strategy::Random),
            "LEAST_REQUEST" => Ok(Strategy::LeastRequest),
            "DEFAULT" => Ok(Strategy::Default),
            "PREFIX_CACHE" => Ok(Strategy::PrefixCache),
            other => Err(format!(
                "\"{other}\" is not one of DEFAULT, PREFIX_CACHE, LEAST_REQUEST, ROUND_ROBIN, RANDOM"
            )),
        }
    }

    /// Whether picks need the shared in-flight counts (which cost a shared-data read and write).
    pub fn needs_in_flight(self) -> bool {
        matches!(
            self,
            Strategy::LeastRequest | Strategy::Default | Strategy::PrefixCache
        )
    }

    /// Whether picks need the collector's published endpoint metrics (go through `schedule`).
    pub fn needs_metrics(self) -> bool {
        matches!(self, Strategy::Default | Strategy::PrefixCache)
    }

    /// Whether the host must hash prompts and keep a `PrefixIndex`.
    pub fn needs_prefix(self) -> bool {
        matches!(self, Strategy::PrefixCache)
    }
}

/// A small, fast PRNG (SplitMix64). Seeded by the host from WASI randomness; the core never
/// reaches for entropy itself, which keeps it deterministic under test.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        crate::rollout::mix64(self.0)
    }

    /// Uniform in `0..n` (n > 0), by multiply-shift: no modulo bias worth mentioning.
    pub fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }
}

#[cfg(test)]
mod tests;
