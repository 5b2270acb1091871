#!/usr/bin/env bash
# make bench, part 1: the proxy cost of the inference-router plugin.
#
# One Envoy with two listeners in front of one nginx backend:
#   A (plain)  router only -> STATIC cluster
#   B (plugin) inference-router wasm filter + router -> ORIGINAL_DST cluster
# wrk drives A and B alternately with a 2 KB chat body and a 200 KB completion
# body; the medians go to docs/benchmarks.md.
#
# Run from the repo root after `make build` (needs dist/inference_router.wasm
# and .venv/bin/envoy):  bash wasm-tests/bench/run.sh
# Knobs: BENCH_QUICK=1 (2 short rounds, < 3 min), BENCH_PIN=0 (no CPU pinning),
#        BENCH_WASM=path (measure another build of the module),
#        BENCH_NICE=n (niceness for the bench processes, default -10),
#        BENCH_KEEP=1 (keep the temp dir with configs, logs and raw results).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
HERE=wasm-tests/bench
WASM=${BENCH_WASM:-$ROOT/dist/inference_router.wasm}   # BENCH_WASM: measure another build
ENVOY=$ROOT/.venv/bin/envoy
DOC=$ROOT/docs/benchmarks.md

# Loopback only. A dedicated 127.0.0.21 keeps clear of `make run` (127.0.0.1:8080/9901).
HOST=127.0.0.21
BACKEND_PORT=18080
PLAIN_PORT=18081
PLUGIN_PORT=18082
ADMIN_PORT=18099

if [[ ${BENCH_QUICK:-0} == 1 ]]; then
  ROUNDS=2 DURATION=4 WARMUP=2 QUICK_FLAG=--quick
else
  ROUNDS=5 DURATION=8 WARMUP=3 QUICK_FLAG=
fi
THREADS=1 CONNECTIONS=16

die() { echo "bench: FAIL: $*" >&2; exit 1; }

[[ -f $WASM ]] || die "$WASM is missing; run \`make build\` first"
[[ -x $ENVOY ]] || die "$ENVOY is missing; the Makefile's venv step installs it"
command -v python3 >/dev/null || die "python3 is needed"

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
for port in $BACKEND_PORT $PLAIN_PORT $PLUGIN_PORT $ADMIN_PORT; do
  if (exec 3<>"/dev/tcp/$HOST/$port") 2>/dev/null; then
    die "$HOST:$port is already in use (a previous bench still running?)"
  fi
done

# --- 2. work dir, processes and their cleanup
WORK=$(mktemp -d /tmp/inference-router-bench.XXXXXX)
PIDS=()
cleanup() {
  local rc=$?
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  if ((rc != 0)); then
    # Envoy's warnings and errors say why (wasm load failure, plugin panic, ...).
    echo "bench: failed; Envoy's last warnings and errors ($WORK/envoy.log):" >&2
    grep -E '\]\[(warning|error|critical)\]' "$WORK/envoy.log" 2>/dev/null | tail -n 20 >&2 || true
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

python3 $HERE/bench.py gen --dir "$WORK" --wasm "$WASM" --host $HOST \
  --admin-port $ADMIN_PORT --plain-port $PLAIN_PORT --plugin-port $PLUGIN_PORT \
  --backend $HOST:$BACKEND_PORT --echo-module "$ECHO_MODULE"

mkdir -p "$WORK/nginx-body"
nginx -t -q -p "$WORK" -c "$WORK/nginx.conf" || die "nginx rejected the generated config"
"${PRIO[@]}" "${NGINX_PREFIX[@]}" nginx -p "$WORK" -c "$WORK/nginx.conf" &   # `daemon off` in the config: stays our child
NGINX_PID=$!
PIDS+=($NGINX_PID)
python3 $HERE/bench.py wait --name nginx --pid $NGINX_PID --tcp $HOST:$BACKEND_PORT

"${PRIO[@]}" "${ENVOY_PREFIX[@]}" "$ENVOY" -c "$WORK/envoy.yaml" --concurrency 1 --disable-hot-restart \
  --log-path "$WORK/envoy.log" &
ENVOY_PID=$!
PIDS+=($ENVOY_PID)
python3 $HERE/bench.py wait --name envoy --pid $ENVOY_PID --url "http://$HOST:$ADMIN_PORT/ready"

# --- 3. measure and report
echo "bench: $ROUNDS rounds x [plain, plugin] x ${DURATION}s per body; wrk -t$THREADS -c$CONNECTIONS" \
  "${WRK_CPUS:+(wrk+nginx on CPU $WRK_CPUS, Envoy on CPU $ENVOY_CPUS)}"
python3 $HERE/bench.py run --dir "$WORK" --host $HOST --admin $HOST:$ADMIN_PORT \
  --plain-port $PLAIN_PORT --plugin-port $PLUGIN_PORT --envoy "$ENVOY" --doc "$DOC" \
  --envoy-pid $ENVOY_PID --nginx-pid $NGINX_PID --nice "$NICE" \
  --rounds $ROUNDS --duration $DURATION --warmup $WARMUP --threads $THREADS --connections $CONNECTIONS \
  --wrk-cpus "$WRK_CPUS" --envoy-cpus "$ENVOY_CPUS" --loadavg "$(cut -d' ' -f1-3 /proc/loadavg)" $QUICK_FLAG
