#!/usr/bin/env bash
# make bench-breakdown: where the plugin's per-request cost goes (docs/benchmarks.md, "Where the
# plugin's time goes"). Builds the plugin again with cost probes (src/probe.rs: IR_COST_PROBE
# leaves parts of the request path out) and measures every build as an arm of run.sh's `cost`
# stage, beside plain Envoy, the floor filter, and the floor routed the way the plugin routes; then
# the `calls` stage: what one host call of each kind costs (the floor filter making 50 per request);
# then the collector's main-thread cost per scrape at 512 endpoints against a floor scraper that asks
# the same pages and ignores them (stages scrapefloor512, scrape512).
# Run from the repo root after `make build`. Knobs: as run.sh's (BENCH_QUICK, BENCH_DOC, ...), and
# BENCH_BEFORE_WASM=path: an earlier build measured beside this one (arm `before`, and its collector
# in stage scrapebefore512), to show what a change saved.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
OUT=$ROOT/target/cost-probe
mkdir -p "$OUT"
extra=()
# name=parts left out
for variant in nolog=log nostats=stats noresp=response noplan=plan noread=plan,read; do
  name=${variant%%=*} parts=${variant#*=}
  echo "breakdown: building $name (IR_COST_PROBE=$parts)"
  IR_COST_PROBE=$parts cargo build --quiet --release --target wasm32-wasip1 -p inference-router \
    --target-dir "$OUT/target"
  cp "$OUT/target/wasm32-wasip1/release/inference_router.wasm" "$OUT/$name.wasm"
  extra+=("$name=$OUT/$name.wasm")
done
stages="cost calls scrapefloor512 scrape512"
if [[ -n ${BENCH_BEFORE_WASM:-} ]]; then
  extra+=("before=$BENCH_BEFORE_WASM")
  stages+=" scrapebefore512"
fi
BENCH_STAGES=$stages BENCH_MICRO=0 BENCH_EXTPROC=0 BENCH_EXTRA_WASM=$(IFS=,; echo "${extra[*]}") \
  bash wasm-tests/bench/run.sh
