#!/usr/bin/env bash
# make fuzz: every fuzz target under libFuzzer for FUZZ_SECONDS each (default 60), or for
# FUZZ_RUNS executions each (the long run docs/robustness.md records), seeded from the
# repository's fixtures and fuzz/seeds/. Prints one line per target: executions, coverage, crashes.
# No sanitizer: the core is safe Rust (its one `unsafe`, the wasm SIMD scan, is not compiled
# here), so AddressSanitizer would only slow the search; overflow checks stay on.
# A crash leaves its input in fuzz/artifacts/<target>/ and fails the run; turn it into a regression
# test (core/src/fuzzing.rs seeds) once fixed.
set -euo pipefail
cd "$(dirname "$0")"
SECONDS_EACH=${FUZZ_SECONDS:-60}
TARGETS=${FUZZ_TARGETS:-request_body response_usage sse_stream metrics_page configuration shared_data}
declare -A SEEDS=(
  [request_body]="seeds/request_body"
  [response_usage]="../testdata/vllm-0.32-cpu/completion.json ../testdata/vllm-0.32-cpu/chat-completion.json ../testdata/vllm-0.32-cpu/error-unknown-model.json"
  [sse_stream]="../testdata/vllm-0.32-cpu/chat-stream-with-usage.sse ../testdata/vllm-0.32-cpu/completion-stream-no-usage.sse"
  [metrics_page]="../testdata/vllm-0.32-cpu/metrics-idle.txt ../testdata/vllm-0.32-cpu/metrics-under-load.txt"
  [configuration]="seeds/configuration"
  [shared_data]="seeds/shared_data"
)
# Inputs beyond these lengths cost time and find nothing the shorter ones do not (a page is
# line-oriented, a stream event-oriented): keep the execution rate up.
declare -A MAX_LEN=([metrics_page]=8192 [sse_stream]=8192)
failed=0
for t in $TARGETS; do
  mkdir -p "corpus/$t"
  for s in ${SEEDS[$t]}; do
    if [[ -d $s ]]; then cp "$s"/* "corpus/$t/"; else cp "$s" "corpus/$t/"; fi
  done
  log=$(mktemp)
  extra=()
  limit=(-max_total_time="$SECONDS_EACH")
  [[ -n ${FUZZ_RUNS:-} ]] && limit=(-runs="$FUZZ_RUNS")
  [[ -n ${MAX_LEN[$t]:-} ]] && extra=(-max_len="${MAX_LEN[$t]}")
  if cargo +nightly fuzz run --sanitizer none "$t" "corpus/$t" -- "${limit[@]}" -print_final_stats=1 "${extra[@]}" >"$log" 2>&1; then
    status=ok
  else
    status=CRASH; failed=1
  fi
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo "?")
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*' || echo "?")
  rss=$(grep -o 'stat::peak_rss_mb: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo "?")
  took=$(grep -o 'Done [0-9]* runs in [0-9]* second' "$log" | grep -o 'in [0-9]*' | grep -o '[0-9]*' || echo "$SECONDS_EACH")
  echo "fuzz: $t: $status, $execs executions in ${took} s, coverage $cov edges, peak RSS ${rss} MB, corpus $(ls "corpus/$t" | wc -l) inputs"
  [[ $status == ok ]] || tail -40 "$log"
  rm -f "$log"
done
exit $failed
