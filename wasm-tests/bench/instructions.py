#!/usr/bin/env python3
"""Instructions per request of each arm, Envoy under callgrind: a count that other load on the
machine does not disturb (the proxy-cost figures in req/s and µs drift from run to run by more
than the parts being compared). Stdlib only; needs valgrind and wrk.

    python3 wasm-tests/bench/instructions.py DIR ARM:PORT[,ARM:PORT...] [--seconds 8]

DIR is a kept `cost` stage of run.sh (`BENCH_KEEP=1 bash wasm-tests/bench/breakdown.sh`, or
`bench.py gen-stage --stage cost` into a directory holding nginx.conf, the bodies and wrk
scripts). Under valgrind V8 can reserve the address space of only about five wasm VMs: give the
stage at most three builds beside the floor filter (`--extra` of gen-stage), and run several.
For each arm: warm up, zero the counters (callgrind_control -z), drive 4 connections for
--seconds, dump, and divide the instructions by the requests Envoy answered on that listener.
The split by object: Envoy's own code, code with no object (V8's generated code: the module and
its trampolines), libc."""

import argparse
import glob
import json
import os
import re
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import admin_get  # noqa: E402  (run.sh's helpers; bench.py is importable)

HOST = "127.0.0.21"
ADMIN = f"{HOST}:18099"


def answered(name):
    for line in admin_get(ADMIN, f"/stats?filter=^http\\.{re.escape(name)}\\.downstream_rq_2xx$").splitlines():
        key, _, value = line.partition(": ")
        if key == f"http.{name}.downstream_rq_2xx":
            return int(value)
    return 0


def by_object(path):
    """Self cost per object of a callgrind dump (ob= sections; a calls= line's next line is the
    callee's inclusive cost, not ours)."""
    names, cur, totals, skip = {}, "?", {}, False
    for line in open(path, errors="replace"):
        if skip:
            skip = False
            continue
        if line.startswith("ob="):
            m = re.match(r"ob=\((\d+)\)(?: (.*))?", line.strip())
            if m:
                if m.group(2):
                    names[m.group(1)] = m.group(2)
                cur = names.get(m.group(1), "(no object)")
            continue
        if line.startswith(("cob=", "cfi=", "cfl=", "cfn=")):
            m = re.match(r"cob=\((\d+)\) (.*)", line.strip())
            if m:
                names[m.group(1)] = m.group(2)
            continue
        if line.startswith("calls="):
            skip = True
            continue
        if line[:1].isdigit() or line[:1] in "+-*":
            parts = line.split()
            if len(parts) >= 2 and parts[1].isdigit():
                totals[cur] = totals.get(cur, 0) + int(parts[1])
    return totals


def port_open(port):
    try:
        socket.create_connection((HOST, port), timeout=1).close()
        return True
    except OSError:
        return False


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dir")
    p.add_argument("arms", help="name:port,... (the stage's listeners)")
    p.add_argument("--seconds", type=int, default=8)
    p.add_argument("--envoy", default=os.path.join(os.path.dirname(__file__), "../../.venv/bin/envoy"))
    a = p.parse_args()
    d = os.path.abspath(a.dir)
    out = os.path.join(d, "callgrind")
    os.makedirs(out, exist_ok=True)
    for f in glob.glob(os.path.join(out, "callgrind.out*")):
        os.remove(f)
    procs = []
    if not port_open(18080):
        procs.append(subprocess.Popen(["nginx", "-p", d, "-c", os.path.join(d, "nginx.conf")],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    # .venv/bin/envoy is a Python launcher: valgrind must run the binary itself.
    envoy = a.envoy
    with open(envoy, "rb") as f:
        if f.read(2) == b"#!":
            envoy = glob.glob(os.path.join(os.path.dirname(envoy), "../lib/python3*/site-packages/envoy/_bin/envoy"))[0]
    vg = subprocess.Popen(["valgrind", "--tool=callgrind", "--smc-check=all-non-file", "--instr-atstart=no",
                           f"--callgrind-out-file={out}/callgrind.out.%p", envoy, "-c",
                           os.path.join(d, "cost", "envoy.yaml"), "--concurrency", "1", "--disable-hot-restart",
                           "--log-path", os.path.join(out, "envoy.log")],
                          stdout=open(os.path.join(out, "valgrind.log"), "w"), stderr=subprocess.STDOUT)
    procs.append(vg)
    try:
        deadline = time.monotonic() + 600
        while True:
            try:
                if admin_get(ADMIN, "/ready").strip() == "LIVE":
                    break
            except OSError:
                pass
            if vg.poll() is not None or time.monotonic() > deadline:
                sys.exit(f"instructions: Envoy did not start under valgrind (see {out}/envoy.log)")
            time.sleep(1)
        subprocess.run(["callgrind_control", "-i", "on"], capture_output=True)
        results = {}
        for spec in a.arms.split(","):
            name, port = spec.split(":")
            script = os.path.join(d, f"wrk_2k_{name}.lua")
            if not os.path.exists(script):
                script = os.path.join(d, "wrk_2k.lua")
            wrk = ["wrk", "-t1", "-c4", "-s", script, f"http://{HOST}:{port}/v1/chat/completions"]
            subprocess.run(wrk + ["-d3s"], capture_output=True)   # warm-up: V8 tiers up
            subprocess.run(["callgrind_control", "-z"], capture_output=True)
            n0 = answered(name)
            subprocess.run(wrk + [f"-d{a.seconds}s"], capture_output=True)
            time.sleep(0.5)
            n = answered(name) - n0
            before = set(glob.glob(os.path.join(out, "callgrind.out.*")))
            subprocess.run(["callgrind_control", "-d", name], capture_output=True)
            time.sleep(1)
            dump = max(set(glob.glob(os.path.join(out, "callgrind.out.*"))) - before or before, key=os.path.getmtime)
            objs = by_object(dump)
            if n <= 0:
                sys.exit(f"instructions: no request answered 2xx on {name}")
            per = {k: v / n for k, v in objs.items()}
            total = sum(per.values())
            envoy_i = sum(v for k, v in per.items() if k.endswith("/envoy"))
            libc = sum(v for k, v in per.items() if "libc" in k)
            results[name] = {"requests": n, "total": total, "envoy": envoy_i, "libc": libc,
                             "no_object": total - envoy_i - libc}
            print(f"{name:10} {n:6} requests  {total:10,.0f} instructions/request  (Envoy {envoy_i:,.0f}, "
                  f"no object / V8 code {total - envoy_i - libc:,.0f}, libc {libc:,.0f})", flush=True)
        with open(os.path.join(out, "results.json"), "w") as f:
            json.dump(results, f, indent=1)
    finally:
        for proc in procs:
            proc.terminate()


if __name__ == "__main__":
    main()
