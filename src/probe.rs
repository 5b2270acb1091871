//! Cost probes for the bench's breakdown of the plugin's per-request cost (docs/benchmarks.md,
//! `wasm-tests/bench/breakdown.sh`). A build made with `IR_COST_PROBE=part,part` in the
//! environment leaves those parts of the request path out, so that an arm running it shows what
//! they cost. Release builds have no probe: every check is a constant `false`.
//!
//! Parts: `log` (access-log properties), `stats` (per-request counters and histograms),
//! `response` (the response path: usage, timings), `plan` (body scan, rollout, pick, rewrite: the
//! request goes to the first endpoint of the first pool with only the destination header set),
//! `read` (with `plan`: the body is not even copied into the VM).
pub fn skips(part: &str) -> bool {
    match option_env!("IR_COST_PROBE") {
        None => false,
        Some(list) => list.split(',').any(|p| p == part),
    }
}
