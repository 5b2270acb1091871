#!/usr/bin/env bash
# make bench: the inference-router plugin's proxy cost, its scheduling quality, its collector's cost.
#
# 1. The core's micro-benchmarks (core.sh: Prometheus parse, scheduling at 8/64/512 endpoints).
# 2. One nginx serving as the backend and as N simulated pods on N loopback addresses.
# 3. One Envoy per stage, each with one listener per arm, driven by wrk in alternation:
#      main     plain / noop (the floor: pause + buffer + continue) / plugin / pair / pair2vm /
#               extproc (Envoy's ext_proc filter + a Rust gRPC endpoint picker, extproc-picker/);
#               2 KB and 200 KB bodies, 16 connections
#      main128  plain / noop / plugin / extproc at 128 connections
#      poolN    plain / ROUND_ROBIN / RANDOM / LEAST_REQUEST / DEFAULT / PREFIX_CACHE (the last two
#               with the collector) over N = 8, 64, 512 pods; the collector alone with no traffic
# 4. sched: scheduling quality, every strategy × three workloads against 8 simulated vLLM pods
#    (`sched-bench`, wasm-tests/src/schedbench), round-robin and an oracle as references; then the
#    overload workload with flow control off and on (2 pods, arrivals at twice their capacity).
# The results go to docs/benchmarks.md, between the generated sections' markers, plots to docs/bench/.
#
# Run from the repo root after `make build` (needs dist/inference_router.wasm
# and .venv/bin/envoy):  bash wasm-tests/bench/run.sh
# Knobs: BENCH_QUICK=1 (short rounds, < 3 min), BENCH_STAGES="main pool8" (a subset),
#        BENCH_MICRO=0 (skip the core micro-benchmarks), BENCH_PIN=0 (no CPU pinning),
#        BENCH_WASM=path (measure another build of the module),
#        BENCH_EXTRA_WASM=name=path[,name=path] (more builds as extra arms of the main stage),
#        BENCH_EXTPROC=0 (no ext_proc arm), BENCH_PICKER_CPUS=list (where the ext_proc picker runs;
#        default: with wrk and nginx),
#        BENCH_SCRAPE_MS=n (DEFAULT's metrics.intervalMs; default: the plugin's, 100),
#        BENCH_NICE=n (niceness for the bench processes, default -10),
#        BENCH_KEEP=1 (keep the temp dir with configs, logs and raw results),
#        BENCH_DOC=path (write the report there instead of docs/benchmarks.md),
#        BENCH_HOST=ip (the loopback address of the backend and listeners, default 127.0.0.21).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
HERE=wasm-tests/bench
WASM=${BENCH_WASM:-$ROOT/dist/inference_router.wasm}   # BENCH_WASM: measure another build
ENVOY=$ROOT/.venv/bin/envoy
DOC=${BENCH_DOC:-$ROOT/docs/benchmarks.md}   # BENCH_DOC: write the report elsewhere
NOOP_TARGET=$ROOT/target/bench-noop-filter
NOOP_WASM=$NOOP_TARGET/wasm32-wasip1/release/bench_noop_filter.wasm
PICKER_TARGET=$ROOT/target/bench-extproc-picker
PICKER=$PICKER_TARGET/release/bench-extproc-picker
# The page every simulated pod serves at /metrics: the real-vLLM fixture in testdata/ (the core's
# tests read the same file).
METRICS_PAGE=${BENCH_METRICS_PAGE:-$ROOT/testdata/vllm-0.32-cpu/metrics-idle.txt}
STAGES=${BENCH_STAGES:-main main128 pool8 pool64 pool512 sched}
START=$SECONDS

# Loopback only. A dedicated 127.0.0.21 keeps clear of `make run` (127.0.0.1:8080/9901); the
# simulated pods are 127.0.200.1, .2, ... (bench.py `pool_addresses`).
HOST=${BENCH_HOST:-127.0.0.21}   # BENCH_HOST: run beside another bench
BACKEND_PORT=18080
BASE_PORT=18081   # one listener per arm: 18081, 18082, ...
ADMIN_PORT=18099
PICKER_PORT=18098   # the ext_proc picker's gRPC port
MAX_ARMS=16

if [[ ${BENCH_QUICK:-0} == 1 ]]; then
  # < 3 minutes: short rounds, the smallest and largest pools, a reduced scheduling matrix.
  MAIN=(--rounds 2 --duration 2 --warmup 1) POOLS=(--rounds 1 --duration 2 --warmup 1 --idle 2 --settle 1)
  QUICK_FLAG=--quick
  STAGES=${BENCH_STAGES:-main main128 pool8 pool512 sched}
  SCHED=(--quick --workloads zipf,prefix --strategies round-robin,DEFAULT,PREFIX_CACHE,oracle)
  : "${BENCH_MICRO:=0}"
else
  MAIN=(--rounds 4 --duration 8 --warmup 2) POOLS=(--rounds 3 --duration 4 --warmup 1 --idle 4 --settle 2)
  QUICK_FLAG=
  SCHED=()
fi
THREADS=1 CONNECTIONS=16

die() { echo "bench: FAIL: $*" >&2; exit 1; }

[[ -f $WASM ]] || die "$WASM is missing; run \`make build\` first"
[[ -x $ENVOY ]] || die "$ENVOY is missing; the Makefile's venv step installs it"
command -v python3 >/dev/null || die "python3 is needed"
# Stages over N simulated pods (N in the name): they need the metrics page and size nginx's pool.
POD_STAGE='^(pool|scrape|scrapefloor|scrapebefore)([0-9]+)$'
for stage in $STAGES; do
  [[ $stage == main || $stage == main128 || $stage == cost || $stage == calls || $stage == sched || $stage =~ $POD_STAGE ]] \
    || die "unknown stage $stage in BENCH_STAGES (main, main128, pool8, pool64, pool512, sched, cost, calls, scrapeN, scrapefloorN, scrapebeforeN)"
  [[ ! $stage =~ $POD_STAGE || -f $METRICS_PAGE ]] || die "$METRICS_PAGE is missing (the pods' /metrics page; set BENCH_METRICS_PAGE)"
done
RUN_SCHED=0 ENVOY_STAGES="" RUN_PICKER=0
for stage in $STAGES; do
  if [[ $stage == sched ]]; then RUN_SCHED=1; else ENVOY_STAGES+="$stage "; fi
  [[ $stage == main* && ${BENCH_EXTPROC:-1} == 1 ]] && RUN_PICKER=1
done
POOL_MAX=0
for stage in $STAGES; do
  [[ $stage =~ $POD_STAGE ]] && ((BASH_REMATCH[2] > POOL_MAX)) && POOL_MAX=${BASH_REMATCH[2]}
done
((POOL_MAX <= 1000)) || die "pools of more than 1000 pods are not supported (127.0.200.x-127.0.203.x)"

# --- 1. tools: wrk and nginx (+ its echo module, used by the pre-flight check)
ECHO_MODULE=/usr/lib/nginx/modules/ngx_http_echo_module.so
need=()
command -v wrk >/dev/null || need+=(wrk)
command -v nginx >/dev/null || need+=(nginx-light)   # nginx-light brings nginx and the echo module
[[ -f $ECHO_MODULE ]] || need+=(libnginx-mod-http-echo)
if ((${#need[@]})); then
  echo "bench: installing ${need[*]}"
  # Debian's nginx package starts a system nginx on port 80 when installed; the
  # bench runs its own, so forbid service starts for this install (policy-rc.d,
  # Debian's switch for that) unless the machine already has such a policy.
  policy=/usr/sbin/policy-rc.d own_policy=0
  if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && own_policy=1
  fi
  # Wait for the dpkg lock rather than fail if another install is running.
  apt_opts=(-qq -o DPkg::Lock::Timeout=300)
  rc=0
  { apt-get "${apt_opts[@]}" update &&
    DEBIAN_FRONTEND=noninteractive apt-get "${apt_opts[@]}" install -y "${need[@]}" >/dev/null; } || rc=$?
  ((own_policy)) && rm -f "$policy"
  ((rc == 0)) || die "apt-get failed installing ${need[*]}"
fi
command -v wrk >/dev/null && command -v nginx >/dev/null && [[ -f $ECHO_MODULE ]] \
  || die "could not install wrk / nginx / the nginx echo module"

# Every port must be free: a leftover process would be measured instead of ours.
[[ -n $ENVOY_STAGES ]] && for port in $BACKEND_PORT $(seq $BASE_PORT $((BASE_PORT + MAX_ARMS - 1))) $ADMIN_PORT $PICKER_PORT; do
  if (exec 3<>"/dev/tcp/$HOST/$port") 2>/dev/null; then
    die "$HOST:$port is already in use (a previous bench still running?)"
  fi
done

# --- 2. the floor filter (its own workspace, built into target/bench-noop-filter) and the
# scheduling bench's load generator + simulator
echo "bench: building the noop floor filter (wasm-tests/bench/noop-filter)"
cargo build --quiet --release --target wasm32-wasip1 --manifest-path $HERE/noop-filter/Cargo.toml \
  --target-dir "$NOOP_TARGET" || die "the noop filter did not build"
if ((RUN_PICKER)); then
  echo "bench: building the ext_proc endpoint picker (wasm-tests/bench/extproc-picker)"
  cargo build --quiet --release --manifest-path $HERE/extproc-picker/Cargo.toml --target-dir "$PICKER_TARGET" \
    || die "the ext_proc picker did not build"
fi
if ((RUN_SCHED)); then
  echo "bench: building sched-bench (cargo build --release -p wasm-tests --bin sched-bench)"
  cargo build --quiet --release -p wasm-tests --bin sched-bench || die "sched-bench did not build"
fi

# --- 3. work dir, processes and their cleanup
WORK=$(mktemp -d /tmp/inference-router-bench.XXXXXX)
PIDS=()
cleanup() {
  local rc=$?
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  if ((rc != 0)); then
    # Envoy's warnings and errors say why (wasm load failure, plugin panic, ...).
    for f in "$WORK"/*/envoy.log; do
      [[ -f $f ]] || continue
      echo "bench: failed; Envoy's last warnings and errors ($f):" >&2
      grep -E '\]\[(warning|error|critical)\]' "$f" 2>/dev/null | tail -n 20 >&2 || true
    done
    echo "bench: configs, logs and raw results kept in $WORK" >&2
  elif [[ ${BENCH_KEEP:-0} == 1 ]]; then
    echo "bench: configs, logs and raw results kept in $WORK"
  else
    rm -rf "$WORK"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM   # run the EXIT trap on Ctrl-C too

# --- 4. the core's micro-benchmarks (before anything is measured: the build would disturb it):
# parse time per real vLLM page, scheduling cost at 8/64/512 endpoints; core.sh writes its section.
if [[ ${BENCH_MICRO:-1} != 0 ]]; then
  echo "bench: core micro-benchmarks (wasm-tests/bench/core.sh)"
  DOC="$DOC" bash $HERE/core.sh || die "the core's micro-benchmarks failed"
fi

# nginx, Envoy and wrk run at a higher priority than everything else (see
# `bench.py prio`): builds on the same machine then disturb the numbers less.
NICE=${BENCH_NICE:--10}
PRIO=(python3 $HERE/bench.py prio --nice "$NICE" --)

# Two CPUs or more: Envoy gets CPU 1 to itself, wrk and nginx share CPU 0, so
# they never steal cycles from the proxy being measured.
WRK_CPUS="" ENVOY_CPUS=""
ENVOY_PREFIX=() NGINX_PREFIX=()
if [[ ${BENCH_PIN:-1} == 1 ]] && (($(nproc) >= 2)) && command -v taskset >/dev/null; then
  WRK_CPUS=0 ENVOY_CPUS=1
  ENVOY_PREFIX=(taskset -c "$ENVOY_CPUS")
  NGINX_PREFIX=(taskset -c "$WRK_CPUS")
fi

# --- 5. nginx: the backend, and the simulated pods on their own addresses
NGINX_PID=""
if [[ -n $ENVOY_STAGES ]]; then
cp "$METRICS_PAGE" "$WORK/metrics.txt" 2>/dev/null || : >"$WORK/metrics.txt"
# nginx's workers drop to an unprivileged user when started as root: they must be able to read
# the page (mktemp makes the directory 0700).
chmod 755 "$WORK" && chmod 644 "$WORK/metrics.txt"
python3 $HERE/bench.py gen-nginx --dir "$WORK" --backend $HOST:$BACKEND_PORT --echo-module "$ECHO_MODULE" \
  --metrics-page "$WORK/metrics.txt" --pool-addresses $POOL_MAX
mkdir -p "$WORK/nginx-body"
nginx -t -q -p "$WORK" -c "$WORK/nginx.conf" || die "nginx rejected the generated config"
"${PRIO[@]}" "${NGINX_PREFIX[@]}" nginx -p "$WORK" -c "$WORK/nginx.conf" &   # `daemon off` in the config: stays our child
NGINX_PID=$!
PIDS+=($NGINX_PID)
python3 $HERE/bench.py wait --name nginx --pid $NGINX_PID --tcp $HOST:$BACKEND_PORT
fi

# --- 5b. the ext_proc endpoint picker, one process for the main stages. It shares wrk's and nginx's
# CPU (BENCH_PICKER_CPUS to move it): Envoy keeps its CPU to itself, as in the other arms.
PICKER_PID=""
if ((RUN_PICKER)); then
  PICKER_CPUS=${BENCH_PICKER_CPUS:-$WRK_CPUS}
  PICKER_PREFIX=()
  [[ -n $PICKER_CPUS ]] && PICKER_PREFIX=(taskset -c "$PICKER_CPUS")
  "${PRIO[@]}" "${PICKER_PREFIX[@]}" "$PICKER" --listen $HOST:$PICKER_PORT --endpoint $HOST:$BACKEND_PORT \
    --model lora-request --target sql-lora --target tweet-summary --threads 1 2>"$WORK/picker.log" &
  PICKER_PID=$!
  PIDS+=($PICKER_PID)
  python3 $HERE/bench.py wait --name "ext_proc picker" --pid $PICKER_PID --tcp $HOST:$PICKER_PORT
fi

# --- 6. the stages: one Envoy each
[[ -n $ENVOY_STAGES ]] && echo "bench: stages: $ENVOY_STAGES; wrk -t$THREADS -c$CONNECTIONS" \
  "${WRK_CPUS:+(wrk+nginx on CPU $WRK_CPUS, Envoy on CPU $ENVOY_CPUS)}"
for stage in $ENVOY_STAGES; do
  python3 $HERE/bench.py gen-stage --dir "$WORK" --stage "$stage" --wasm "$WASM" --noop-wasm "$NOOP_WASM" \
    --host $HOST --admin-port $ADMIN_PORT --base-port $BASE_PORT --backend $HOST:$BACKEND_PORT \
    --extra "${BENCH_EXTRA_WASM:-}" ${BENCH_SCRAPE_MS:+--scrape-interval-ms "$BENCH_SCRAPE_MS"} \
    ${PICKER_PID:+--extproc $HOST:$PICKER_PORT}
  "${PRIO[@]}" "${ENVOY_PREFIX[@]}" "$ENVOY" -c "$WORK/$stage/envoy.yaml" --concurrency 1 --disable-hot-restart \
    --log-path "$WORK/$stage/envoy.log" &
  ENVOY_PID=$!
  PIDS+=($ENVOY_PID)
  python3 $HERE/bench.py wait --name "envoy ($stage)" --pid $ENVOY_PID --url "http://$HOST:$ADMIN_PORT/ready" --timeout 60
  if [[ $stage == main* || $stage == cost || $stage == calls ]]; then settings=("${MAIN[@]}"); else settings=("${POOLS[@]}"); fi
  python3 $HERE/bench.py run --dir "$WORK" --stage "$stage" --host $HOST --admin $HOST:$ADMIN_PORT \
    --envoy "$ENVOY" --envoy-pid $ENVOY_PID --nginx-pid $NGINX_PID ${PICKER_PID:+--picker-pid $PICKER_PID} \
    --nice "$NICE" "${settings[@]}" \
    --threads $THREADS --connections $CONNECTIONS --wrk-cpus "$WRK_CPUS" --envoy-cpus "$ENVOY_CPUS" \
    --metrics-page-bytes "$(stat -c %s "$WORK/metrics.txt")" \
    ${BENCH_SCRAPE_MS:+--scrape-interval-ms "$BENCH_SCRAPE_MS"} $QUICK_FLAG
  kill $ENVOY_PID
  wait $ENVOY_PID 2>/dev/null || true
  unset 'PIDS[${#PIDS[@]}-1]'
done

# --- 7. scheduling quality: its own Envoys and simulated pods (nginx is not involved)
if ((RUN_SCHED)); then
  [[ -n $NGINX_PID ]] && { kill "$NGINX_PID" 2>/dev/null || true; }
  echo "bench: scheduling quality: target/release/sched-bench --out $WORK/sched.json ${SCHED[*]}"
  target/release/sched-bench --out "$WORK/sched.json" "${SCHED[@]}" || die "sched-bench failed"
  # Flow control under overload: the same arrivals with flowControl off and on (docs/benchmarks.md).
  OVERLOAD=(--workloads overload --strategies DEFAULT,DEFAULT+flowControl --pods 2 --time-scale 0.5
            --overload-rate 28 --overload-seconds "$( [[ ${BENCH_QUICK:-0} == 1 ]] && echo 30 || echo 60)")
  echo "bench: flow control under overload: target/release/sched-bench --out $WORK/overload.json ${OVERLOAD[*]}"
  target/release/sched-bench --out "$WORK/overload.json" "${OVERLOAD[@]}" || die "sched-bench overload failed"
fi

# --- 8. report
python3 $HERE/bench.py report --dir "$WORK" --doc "$DOC"
echo "bench: done in $((SECONDS - START)) s"
