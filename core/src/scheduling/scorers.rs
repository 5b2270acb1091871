//! Scorers: each gives a candidate a value in [0, 1], higher is better. The min–max ones need the
//! candidates' range, which `schedule` computes in one pass before scoring.

use super::claims::{adapter_hash, Claim};
use crate::pool::EndpointState;

/// The queue the endpoint has now, as best we know: the scraped queue plus our requests sent since
/// that scrape that are still open there (the scrape cannot include them; the ones already
/// finished are gone from the engine too). Counting them is what spreads a burst: every pick
/// raises the picked endpoint's queue for the next one.
pub fn effective_queue(s: &EndpointState, picks_since_scrape: u32, in_flight: u32) -> u64 {
    u64::from(s.waiting) + u64::from(picks_since_scrape.min(in_flight))
}

/// Min–max normalisation where less is better: the minimum scores 1, the maximum 0, all equal 1.
/// The range counts as at least `floor`, so a difference smaller than that (one request more on a
/// near-idle pod) moves the score only a little instead of across the whole scale, where it would
/// outweigh the other scorers.
pub fn lower_is_better(value: u64, min: u64, max: u64, floor: u64) -> f64 {
    let range = max.saturating_sub(min).max(floor);
    if range == 0 {
        return 1.0;
    }
    let v = value.clamp(min, max);
    (range - (v - min)) as f64 / range as f64
}

/// Queue scorer: min–max (range at least `floor`) over the candidates of the effective queue.
pub fn queue(
    s: &EndpointState,
    picks_since_scrape: u32,
    in_flight: u32,
    min: u64,
    max: u64,
    floor: u64,
) -> f64 {
    lower_is_better(
        effective_queue(s, picks_since_scrape, in_flight),
        min,
        max,
        floor,
    )
}

/// KV-cache scorer: the free fraction. Unknown (non-finite) use scores 0.
pub fn kv_cache(s: &EndpointState) -> f64 {
    let u = s.kv_cache_usage;
    if u.is_finite() {
        1.0 - f64::from(u.clamp(0.0, 1.0))
    } else {
        0.0
    }
}

/// In-flight scorer: min–max over the candidates of this gateway's open requests there. It is the
/// only signal that also falls between scrapes (requests end), where `picks_since_scrape`, already
/// in the effective queue, only grows.
pub fn in_flight(in_flight: u32, min: u32, max: u32, floor: u64) -> f64 {
    lower_is_better(u64::from(in_flight), u64::from(min), u64::from(max), floor)
}

/// Whether the endpoint reports `adapter` as running or waiting.
pub fn knows_adapter(s: &EndpointState, adapter: &str) -> bool {
    s.running_adapters.iter().any(|a| a == adapter)
        || s.waiting_adapters.iter().any(|a| a == adapter)
}

/// LoRA-affinity scorer for a request to `adapter` (name and `adapter_hash`; None: the base
/// model, 1 everywhere). The endpoint's adapters are the scraped running and waiting ones plus
/// `claims` still live (sent here since the scrape, so not in it yet):
/// - 1.0: running there, or queued there (waiting or claimed) and within `max_lora`: it joins
///   the batch without taking another slot;
/// - 0.8: not there, but a slot is free (fewer adapters than `max_lora`);
/// - 0.6: queued there but beyond `max_lora`: it waits for a slot, as it would anywhere full;
/// - 0: a new adapter on a full endpoint, which waits until an active adapter's requests drain.
///
/// Unknown `max_lora` claims no free slot (we cannot promise a load without an eviction wait);
/// there our own claim still scores 1 (sending more of it adds no adapter) and a scraped waiting
/// one 0.6.
pub fn lora_affinity(s: &EndpointState, adapter: Option<(&str, u32)>, claims: &[Claim]) -> f64 {
    let Some((a, hash)) = adapter else { return 1.0 };
    if s.running_adapters.iter().any(|r| r == a) {
        return 1.0;
    }
    let live = || claims.iter().filter(|c| c.live(s.picks_at_scrape));
    let claimed = live().any(|c| c.adapter == hash);
    let waiting = s.waiting_adapters.iter().any(|w| w == a);
    // Running and waiting are disjoint (the parser drops running ones from waiting). Claims are
    // distinct adapters: those the scrape already lists are not counted twice.
    let mut used = s.running_adapters.len() + s.waiting_adapters.len();
    let live_claims = live().count();
    if live_claims > 0 {
        let names = s.running_adapters.len() + s.waiting_adapters.len();
        let listed = if s.adapter_hashes.len() == names {
            let hashes = &s.adapter_hashes;
            hashes
                .iter()
                .filter(|&&h| live().any(|c| c.adapter == h))
                .count()
        } else {
            s.running_adapters
                .iter()
                .chain(&s.waiting_adapters)
                .filter(|n| {
                    let h = adapter_hash(n);
                    live().any(|c| c.adapter == h)
                })
                .count()
        };
        used += live_claims.saturating_sub(listed);
    }
    match s.max_lora.map(|m| m as usize) {
        Some(max) if claimed || waiting => {
            if used <= max {
                1.0
            } else {
                0.6
            }
        }
        Some(max) if used < max => 0.8,
        Some(_) => 0.0,
        None if claimed => 1.0,
        None if waiting => 0.6,
        None => 0.0,
    }
}

/// Prefix scorer: matched leading blocks over the request's blocks (0 for a prompt too short to
/// fill one block, which is the same for every endpoint and so no preference).
pub fn prefix(matched: usize, blocks: usize) -> f64 {
    if blocks == 0 {
        0.0
    } else {
        matched.min(blocks) as f64 / blocks as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduling::claims::Claim;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn min_max() {
        assert_eq!(lower_is_better(3, 3, 3, 0), 1.0);
        assert_eq!(lower_is_better(0, 0, 4, 0), 1.0);
        assert_eq!(lower_is_better(4, 0, 4, 0), 0.0);
        assert_eq!(lower_is_better(1, 0, 4, 0), 0.75);
        assert_eq!(lower_is_better(9, 0, 4, 0), 0.0, "clamped");
        assert_eq!(in_flight(2, 2, 2, 0), 1.0);
        // A range below the floor counts as the floor: one request more is a small step.
        assert_eq!(lower_is_better(1, 0, 1, 5), 0.8);
        assert_eq!(lower_is_better(3, 3, 3, 5), 1.0);
        assert_eq!(lower_is_better(10, 0, 10, 5), 0.0);
    }

    #[test]
    fn effective_queue_counts_only_our_open_requests_since_the_scrape() {
        let s = EndpointState {
            waiting: 2,
            ..Default::default()
        };
        assert_eq!(effective_queue(&s, 5, 3), 5, "3 of the 5 picks still open");
        assert_eq!(
            effective_queue(&s, 5, 9),
            7,
            "open before the scrape: already in `waiting`"
        );
        assert_eq!(effective_queue(&s, 5, 0), 2, "all finished");
    }

    #[test]
    fn kv() {
        let mut s = EndpointState {
            kv_cache_usage: 0.25,
            ..Default::default()
        };
        assert_eq!(kv_cache(&s), 0.75);
        s.kv_cache_usage = 1.7;
        assert_eq!(kv_cache(&s), 0.0);
        s.kv_cache_usage = f32::NAN;
        assert_eq!(kv_cache(&s), 0.0);
    }

    /// The scorer for adapter `a` with no claims.
    fn lora(s: &EndpointState, a: &str) -> f64 {
        lora_affinity(s, Some((a, adapter_hash(a))), &[])
    }

    #[test]
    fn lora_levels() {
        let s = EndpointState {
            running_adapters: names(&["a", "b"]),
            waiting_adapters: names(&["c"]),
            max_lora: Some(4),
            ..Default::default()
        };
        assert_eq!(lora_affinity(&s, None, &[]), 1.0);
        assert_eq!(lora(&s, "a"), 1.0);
        assert_eq!(lora(&s, "z"), 0.8);
        assert_eq!(lora(&s, "c"), 1.0, "queued, and within max_lora");
        let full = EndpointState {
            max_lora: Some(2),
            ..s.clone()
        };
        assert_eq!(lora(&full, "c"), 0.6, "queued for a slot");
        assert_eq!(lora(&full, "z"), 0.0);
        let unknown = EndpointState {
            max_lora: None,
            ..s.clone()
        };
        assert_eq!(lora(&unknown, "z"), 0.0);
        assert_eq!(lora(&unknown, "c"), 0.6);
        assert!(knows_adapter(&s, "c") && !knows_adapter(&s, "z"));
    }

    #[test]
    fn live_claims_count_as_queued_adapters() {
        let claim = |a: &str, pick| Claim {
            adapter: adapter_hash(a),
            pick,
        };
        let s = EndpointState {
            running_adapters: names(&["a"]),
            max_lora: Some(2),
            picks_at_scrape: 10,
            ..Default::default()
        };
        let score =
            |a: &str, claims: &[Claim]| lora_affinity(&s, Some((a, adapter_hash(a))), claims);
        // Our pick of b since the scrape: b joins the batch there, the last slot is taken.
        let b = [claim("b", 12)];
        assert_eq!(score("b", &b), 1.0);
        assert_eq!(score("z", &b), 0.0);
        assert_eq!(score("a", &b), 1.0);
        // Before the scrape: the scrape would list b if it were still there.
        let old = [claim("b", 9)];
        assert_eq!(score("b", &old), 0.8);
        assert_eq!(score("z", &old), 0.8);
        // A claim of an adapter the scrape lists takes no second slot.
        let a = [claim("a", 11)];
        assert_eq!(score("z", &a), 0.8);
        // Two new adapters claimed beside a running one: over max_lora, both queue for a slot.
        let bc = [claim("b", 11), claim("c", 12)];
        assert_eq!(score("b", &bc), 0.6);
        assert_eq!(score("z", &bc), 0.0);
        // Unknown max_lora: our own adapter still scores as queued there.
        let unknown = EndpointState {
            max_lora: None,
            ..s.clone()
        };
        assert_eq!(
            lora_affinity(&unknown, Some(("b", adapter_hash("b"))), &b),
            1.0
        );
        assert_eq!(
            lora_affinity(&unknown, Some(("z", adapter_hash("z"))), &b),
            0.0
        );
    }

    #[test]
    fn prefix_fraction() {
        assert_eq!(prefix(0, 0), 0.0);
        assert_eq!(prefix(2, 4), 0.5);
        assert_eq!(prefix(9, 4), 1.0);
    }
}
