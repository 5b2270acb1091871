//! Weighted target models (the InferenceModel's `targetModels`): canary and gray releases of LoRA
//! adapters behind one served name. A pick is either random (probability weight / sum) or, for a
//! request with a session key, a stable hash of that key, so one user stays on one variant.

/// Target names with cumulative weights. Built only by the config, which guarantees at least one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WeightedTargets {
    names: Vec<String>,
    /// `cumulative[i]` = sum of weights of targets 0..=i.
    cumulative: Vec<u64>,
}

impl WeightedTargets {
    /// All-zero weights mean uniform, as in the InferenceModel API.
    pub fn new(pairs: Vec<(String, u32)>) -> WeightedTargets {
        let uniform = pairs.iter().all(|(_, w)| *w == 0);
        let mut total = 0u64;
        let mut names = Vec::with_capacity(pairs.len());
        let mut cumulative = Vec::with_capacity(pairs.len());
        for (name, w) in pairs {
            total += if uniform { 1 } else { u64::from(w) };
            names.push(name);
            cumulative.push(total);
        }
        WeightedTargets { names, cumulative }
    }

    pub fn names(&self) -> &[String] {
        &self.names
    }

    fn total(&self) -> u64 {
        self.cumulative.last().copied().unwrap_or(0)
    }

    /// Index of the target owning point `x` in `[0, total)`.
    fn at(&self, x: u64) -> usize {
        // First target whose cumulative weight exceeds x; zero-weight targets own no points.
        self.cumulative.partition_point(|&c| c <= x)
    }

    /// A weighted pick from a uniformly random `r`.
    pub fn pick_random(&self, r: u64) -> &str {
        self.name_at(r)
    }

    /// A weighted pick that is a pure function of `key`: the same session always gets the same target
    /// (for unchanged weights), on every worker and across restarts.
    pub fn pick_sticky(&self, key: &[u8]) -> &str {
        self.name_at(stable_hash(key))
    }

    fn name_at(&self, r: u64) -> &str {
        let total = self.total();
        if total == 0 {
            return "";
        }
        // `r % total` is biased by at most total / 2^64: negligible for integer weights.
        self.names
            .get(self.at(r % total))
            .map(String::as_str)
            .unwrap_or("")
    }
}

/// FNV-1a followed by a 64-bit finaliser, so short, similar keys still spread uniformly.
pub fn stable_hash(key: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in key {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix64(h)
}

/// SplitMix64's finaliser: a bijective avalanche of 64 bits.
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn targets(ws: &[(&str, u32)]) -> WeightedTargets {
        WeightedTargets::new(ws.iter().map(|(n, w)| (n.to_string(), *w)).collect())
    }

    #[test]
    fn random_picks_follow_weights_exactly_over_the_whole_range() {
        let t = targets(&[("a", 50), ("b", 30), ("c", 20)]);
        let mut counts = [0u32; 3];
        // Every point of [0, 100) once: the split is exact.
        for r in 0..100u64 {
            match t.pick_random(r) {
                "a" => counts[0] += 1,
                "b" => counts[1] += 1,
                "c" => counts[2] += 1,
                other => panic!("unexpected {other}"),
            }
        }
        assert_eq!(counts, [50, 30, 20]);
    }

    #[test]
    fn zero_weight_target_is_never_picked() {
        let t = targets(&[("a", 0), ("b", 5), ("c", 0)]);
        for r in 0..1000u64 {
            assert_eq!(t.pick_random(r.wrapping_mul(0x9e37_79b9_7f4a_7c15)), "b");
        }
    }

    #[test]
    fn all_zero_weights_mean_uniform() {
        let t = targets(&[("a", 0), ("b", 0)]);
        assert_eq!(t.pick_random(0), "a");
        assert_eq!(t.pick_random(1), "b");
    }

    #[test]
    fn sticky_pick_is_stable_and_spreads_by_weight() {
        let t = targets(&[("a", 70), ("b", 30)]);
        let mut a = 0;
        for i in 0..10_000u32 {
            let key = format!("session-{i}");
            let first = t.pick_sticky(key.as_bytes());
            assert_eq!(first, t.pick_sticky(key.as_bytes()));
            if first == "a" {
                a += 1;
            }
        }
        // 70% of 10,000, sigma ~46: 6 sigma either side.
        assert!((6_725..=7_275).contains(&a), "a got {a}");
    }

    #[test]
    fn stable_hash_is_fixed_across_builds() {
        // Pinned so a session keeps its variant across upgrades of the module.
        assert_eq!(stable_hash(b""), mix64(0xcbf2_9ce4_8422_2325));
        assert_ne!(stable_hash(b"user-1"), stable_hash(b"user-2"));
    }
}
