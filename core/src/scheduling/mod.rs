//! Endpoint scheduling, in the Gateway API Inference Extension's vocabulary: filters narrow the
//! candidates, scorers rank them, a picker chooses. This first cut has the load-only strategies;
//! the metrics-based profiles (DEFAULT, PREFIX_CACHE) arrive with the metrics collector.

mod picker;

pub use picker::{least_request, random, round_robin};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    RoundRobin,
    Random,
    /// Fewest in-flight requests, counted across all of Envoy's workers.
    LeastRequest,
}

impl Strategy {
    pub fn parse(s: &str) -> Result<Strategy, String> {
        match s {
            "ROUND_ROBIN" => Ok(Strategy::RoundRobin),
            "RANDOM" => Ok(Strategy::Random),
            "LEAST_REQUEST" => Ok(Strategy::LeastRequest),
            "DEFAULT" | "PREFIX_CACHE" => Err(format!(
                "\"{s}\" needs the metrics collector, which this version does not have yet; \
                 use LEAST_REQUEST, ROUND_ROBIN or RANDOM"
            )),
            other => Err(format!(
                "\"{other}\" is not one of DEFAULT, PREFIX_CACHE, LEAST_REQUEST, ROUND_ROBIN, RANDOM"
            )),
        }
    }

    /// Whether picks need the shared in-flight counts (which cost a shared-data read and write).
    pub fn needs_in_flight(self) -> bool {
        matches!(self, Strategy::LeastRequest)
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
