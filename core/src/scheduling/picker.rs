//! Pickers. The load-only strategies' pickers each return an index into the pool's endpoints,
//! or None for an empty pool; `MaxPicker` is the profile picker: maximum score, random tie-break.

use super::Rng;

/// The next endpoint in turn. `counter` is the caller's (per worker) position.
pub fn round_robin(n: usize, counter: &mut u64) -> Option<usize> {
    if n == 0 {
        return None;
    }
    let i = (*counter % n as u64) as usize;
    *counter = counter.wrapping_add(1);
    Some(i)
}

pub fn random(n: usize, rng: &mut Rng) -> Option<usize> {
    if n == 0 {
        return None;
    }
    Some(rng.below(n))
}

/// The endpoint with the fewest in-flight requests; ties broken at random so equal endpoints
/// share a burst instead of the first one taking it all.
pub fn least_request(in_flight: &[u32], rng: &mut Rng) -> Option<usize> {
    let min = *in_flight.iter().min()?;
    let ties = in_flight.iter().filter(|&&c| c == min).count();
    let nth = rng.below(ties);
    in_flight
        .iter()
        .enumerate()
        .filter(|(_, &c)| c == min)
        .nth(nth)
        .map(|(i, _)| i)
}

/// Scores closer than this are a tie: equal endpoints give bit-equal sums, and anything closer
/// is noise, not a preference.
const TIE: f64 = 1e-9;

/// Maximum score with a uniform random tie-break, in one pass and no allocation: the k-th tied
/// candidate replaces the current choice with probability 1/k (reservoir sampling).
#[derive(Debug, Clone)]
pub struct MaxPicker {
    best: Option<usize>,
    score: f64,
    ties: usize,
    /// Tie-break key of `best` (`offer_keyed`): the smallest wins.
    key: u64,
}

impl Default for MaxPicker {
    fn default() -> Self {
        MaxPicker::new()
    }
}

impl MaxPicker {
    pub fn new() -> MaxPicker {
        MaxPicker {
            best: None,
            score: f64::NEG_INFINITY,
            ties: 0,
            key: u64::MAX,
        }
    }

    /// Offer candidate `i` with `score`; a tie goes to the smallest `key`. With keys derived from
    /// the request (e.g. its prompt's first block), every Envoy worker breaks the tie the same way,
    /// so equal endpoints do not split requests that should stay together.
    pub fn offer_keyed(&mut self, i: usize, score: f64, key: u64) {
        if score > self.score + TIE {
            self.best = Some(i);
            self.score = score;
            self.key = key;
        } else if (score - self.score).abs() <= TIE && key < self.key {
            self.best = Some(i);
            self.key = key;
        }
    }

    /// Offer candidate `i` with `score`. A NaN score never wins.
    pub fn offer(&mut self, i: usize, score: f64, rng: &mut Rng) {
        if score > self.score + TIE {
            self.best = Some(i);
            self.score = score;
            self.ties = 1;
        } else if (score - self.score).abs() <= TIE {
            self.ties += 1;
            if rng.below(self.ties) == 0 {
                self.best = Some(i);
            }
        }
    }

    pub fn best(&self) -> Option<usize> {
        self.best
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn keyed_ties_go_to_the_smallest_key_whatever_the_order() {
        for order in [[0usize, 1, 2], [2, 1, 0], [1, 2, 0]] {
            let mut p = MaxPicker::new();
            for i in order {
                let key = [30u64, 10, 20][i];
                p.offer_keyed(i, 1.0, key);
            }
            assert_eq!(p.best(), Some(1));
        }
        let mut p = MaxPicker::new();
        p.offer_keyed(0, 1.0, 5);
        p.offer_keyed(1, 2.0, 9);
        assert_eq!(p.best(), Some(1), "a higher score beats any key");
    }

    #[test]
    fn round_robin_cycles() {
        let mut c = 0;
        let picks: Vec<_> = (0..6).map(|_| round_robin(3, &mut c)).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2].map(Some));
        assert_eq!(round_robin(0, &mut c), None);
    }

    #[test]
    fn least_request_takes_the_minimum_and_breaks_ties_at_random() {
        let mut rng = Rng::new(7);
        assert_eq!(least_request(&[3, 1, 2], &mut rng), Some(1));
        assert_eq!(least_request(&[], &mut rng), None);
        let mut seen = [0u32; 3];
        for _ in 0..3000 {
            let i = least_request(&[0, 5, 0], &mut rng).unwrap();
            seen[i] += 1;
        }
        assert_eq!(seen[1], 0);
        assert!(seen[0] > 1300 && seen[2] > 1300, "{seen:?}");
    }

    #[test]
    fn max_picker_takes_the_maximum_and_shares_ties() {
        let mut rng = Rng::new(3);
        let mut p = MaxPicker::new();
        assert_eq!(p.best(), None);
        for (i, s) in [0.5, 2.0, f64::NAN, 1.0].into_iter().enumerate() {
            p.offer(i, s, &mut rng);
        }
        assert_eq!(p.best(), Some(1));
        let mut seen = [0u32; 3];
        for _ in 0..3000 {
            let mut p = MaxPicker::new();
            for (i, s) in [1.0, 0.0, 1.0].into_iter().enumerate() {
                p.offer(i, s, &mut rng);
            }
            seen[p.best().unwrap()] += 1;
        }
        assert_eq!(seen[1], 0);
        assert!(seen[0] > 1300 && seen[2] > 1300, "{seen:?}");
    }

    #[test]
    fn random_is_roughly_uniform() {
        let mut rng = Rng::new(42);
        let mut seen = [0u32; 4];
        for _ in 0..40_000 {
            seen[random(4, &mut rng).unwrap()] += 1;
        }
        // 10,000 expected each, sigma ~87: 6 sigma.
        for s in seen {
            assert!((9_480..=10_520).contains(&s), "{seen:?}");
        }
        assert_eq!(random(0, &mut rng), None);
    }
}
