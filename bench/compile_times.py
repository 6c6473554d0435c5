#!/usr/bin/env python3
"""How long gradc takes to compile and load the examples, against the issue's limits.

    python bench/compile_times.py

| check | limit |
|---|---|
| cold ``gradc compile examples/moons/model.py`` (empty cache, from the shell) | < 5 s |
| warm ``gradc compile examples/moons/model.py`` (cached, from the shell) | < 2 s |
| warm ``gradc.load("examples/moons/model.py")`` inside a running process (median) | < 0.3 s |
| cold ``gradc compile examples/mnist_mlp/model.py`` | < 20 s |
| lines of the generated ``mnist_mlp.c`` | <= 2,000 |

Shell timings are wall clock of the whole command (interpreter start and
imports included), each in a fresh GRADC_CACHE_DIR. Prints a Markdown table
and exits 1 when a limit is missed.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MOONS = os.path.join(ROOT, "examples", "moons", "model.py")
MNIST = os.path.join(ROOT, "examples", "mnist_mlp", "model.py")

WARM_LOAD = r'''
import json, statistics, sys, time
import gradc
path, n = sys.argv[1], int(sys.argv[2])
t0 = time.perf_counter()
gradc.load(path)                  # the first load of the process (imports SymPy) does not count
first = time.perf_counter() - t0
times = []
for _ in range(n):
    t0 = time.perf_counter()
    gradc.load(path)
    times.append(time.perf_counter() - t0)
print(json.dumps(dict(first=first, median=statistics.median(times), times=times)))
'''


def gradc_cmd():
    """The ``gradc`` console script beside this interpreter, else ``python -m gradc``."""
    exe = os.path.join(os.path.dirname(sys.executable), "gradc")
    if os.access(exe, os.X_OK):
        return [exe]
    found = shutil.which("gradc")
    return [found] if found else [sys.executable, "-m", "gradc"]


def shell_compile(model, outdir, cache):
    env = dict(os.environ, GRADC_CACHE_DIR=cache)
    t0 = time.perf_counter()
    p = subprocess.run(gradc_cmd() + ["compile", model, "-o", outdir], capture_output=True, text=True, env=env,
                       timeout=600)
    dt = time.perf_counter() - t0
    if p.returncode != 0:
        raise RuntimeError(f"gradc compile {model} failed:\n{p.stdout}{p.stderr}")
    return dt


def warm_load(model, cache, n=9):
    env = dict(os.environ, GRADC_CACHE_DIR=cache)
    p = subprocess.run([sys.executable, "-c", WARM_LOAD, model, str(n)], capture_output=True, text=True, env=env,
                       timeout=600)
    if p.returncode != 0:
        raise RuntimeError(f"warm gradc.load failed:\n{p.stderr}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def c_lines(path):
    with open(path, "rb") as f:
        return f.read().count(b"\n")


def run(repeat=1):
    """The measurements: a list of (check, value, unit, limit, ok)."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="gradc-times-") as tmp:
        cold, warm, mn = [], [], []
        loads = None
        for k in range(repeat):
            cache = os.path.join(tmp, f"cache-moons-{k}")
            out = os.path.join(tmp, f"out-moons-{k}")
            cold.append(shell_compile(MOONS, out, cache))
            warm.append(shell_compile(MOONS, out, cache))
            r = warm_load(MOONS, cache)
            loads = r if loads is None or r["median"] < loads["median"] else loads
            mcache, mout = os.path.join(tmp, f"cache-mnist-{k}"), os.path.join(tmp, f"out-mnist-{k}")
            mn.append(shell_compile(MNIST, mout, mcache))
        lines = c_lines(os.path.join(mout, "mnist_mlp.c"))
        rows.append(("cold `gradc compile examples/moons/model.py`", min(cold), "s", 5.0, min(cold) < 5.0))
        rows.append(("warm `gradc compile examples/moons/model.py` (shell)", min(warm), "s", 2.0, min(warm) < 2.0))
        rows.append(("warm `gradc.load` of moons in a running process (median of 9)", loads["median"], "s", 0.3,
                     loads["median"] < 0.3))
        rows.append(("first `gradc.load` of moons in a fresh process (warm cache; imports SymPy)", loads["first"],
                     "s", None, True))
        rows.append(("cold `gradc compile examples/mnist_mlp/model.py`", min(mn), "s", 20.0, min(mn) < 20.0))
        rows.append(("lines of the generated `mnist_mlp.c`", lines, "lines", 2000, lines <= 2000))
    return rows


def table(rows):
    out = ["| check | measured | limit | ok |", "|---|---:|---:|:---:|"]
    for what, value, unit, limit, ok in rows:
        v = f"{value:.3f} s" if unit == "s" else f"{value} {unit}"
        lim = "—" if limit is None else (f"< {limit:g} s" if unit == "s" else f"<= {limit:,}")
        out.append(f"| {what} | {v} | {lim} | {'yes' if ok else '**NO**'} |")
    return "\n".join(out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=1, help="measure N times, report the best (default 1)")
    args = ap.parse_args(argv)
    rows = run(max(1, args.repeat))
    print(table(rows))
    missed = [r[0] for r in rows if not r[4]]
    print()
    if missed:
        print("FAIL: limit missed: " + "; ".join(missed))
        return 1
    print("OK: every limit met")
    return 0


if __name__ == "__main__":
    sys.exit(main())
