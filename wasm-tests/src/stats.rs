//! Statistical bounds for the distribution tests, chosen so that a correct router fails a test
//! with probability below 1e-6.

use std::collections::HashMap;

/// Pearson's chi-square statistic of `observed` counts against probabilities `expected`.
pub fn chi_square(observed: &[usize], expected: &[f64]) -> f64 {
    let n: usize = observed.iter().sum();
    observed
        .iter()
        .zip(expected)
        .map(|(&o, &p)| {
            let e = p * n as f64;
            (o as f64 - e).powi(2) / e
        })
        .sum()
}

/// Critical value of chi-square with 2 degrees of freedom (three categories): its survival
/// function is exactly exp(-x/2), so P(X > -2 ln alpha) = alpha.
pub fn chi_square_critical_df2(alpha: f64) -> f64 {
    -2.0 * alpha.ln()
}

/// Sigmas for a per-category normal bound: P(|Z| > 5.5) = 3.8e-8, so even over 20 categories
/// (union bound) a false failure stays below 1e-6.
pub const K_SIGMA: f64 = 5.5;

/// Check each category's count lies within `K_SIGMA` binomial standard deviations of n·p.
/// Returns a description of the first violation.
pub fn within_k_sigma(observed: &[usize], expected: &[f64]) -> Result<(), String> {
    let n: usize = observed.iter().sum();
    for (i, (&o, &p)) in observed.iter().zip(expected).enumerate() {
        let mean = p * n as f64;
        let sigma = (n as f64 * p * (1.0 - p)).sqrt();
        let dev = (o as f64 - mean).abs();
        if dev > K_SIGMA * sigma {
            return Err(format!(
                "category {i}: {o} of {n}, expected {mean:.1} ± {:.1} ({K_SIGMA}σ)",
                K_SIGMA * sigma
            ));
        }
    }
    Ok(())
}

/// Counts of each of `keys` in `values` (values not in `keys` are an error: they show up as the
/// `Err` so the test can report them).
pub fn tally<'a>(
    keys: &[&str],
    values: impl IntoIterator<Item = &'a str>,
) -> Result<Vec<usize>, String> {
    let mut counts: HashMap<&str, usize> = keys.iter().map(|k| (*k, 0)).collect();
    for v in values {
        match counts.get_mut(v) {
            Some(c) => *c += 1,
            None => return Err(format!("unexpected value {v:?} (expected one of {keys:?})")),
        }
    }
    Ok(keys
        .iter()
        .map(|k| counts.get(k).copied().unwrap_or(0))
        .collect())
}
