#!/usr/bin/env python3
"""Compile time and generated source size of a 2-layer MLP against its hidden width.

The model is 32-W-10 (ReLU, softmax cross-entropy on an int32 label). Each
width is compiled on a cold cache (a fresh GRADC_CACHE_DIR) in its own
Python process; the timing starts after gradc, SymPy and the code generator
are imported, so it covers exactly load + lower + differentiate + render +
C compiler. Two clocks: wall time, and CPU time (user + system, of the
Python process and of the compiler it runs). The check uses CPU time, which
other load on a shared machine barely moves; wall time is shown too. With
``--repeat N`` the widths are compiled round-robin N times and the fastest
run of each counts.

    python bench/compile_width.py                       # widths 16 64 256 1024
    python bench/compile_width.py --widths 16,64 --repeat 1

Prints a Markdown table and exits 1 when, from width 64 up, the generated .c
grows (more lines, or more bytes once each run of digits is counted as one
character, so that "1024" is no bigger than "64") or the compile time exceeds
1.5x that of width 64: nothing may be unrolled per hidden unit.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

INPUT, CLASSES, BASE = 32, 10, 64
TIME_FACTOR = 1.5

MODEL = '''\
import gradc as gc

m = gc.Model("mlp2")
x = m.input("x", {d})
label = m.target("label", dtype="int32")
W1, b1 = m.param("W1", ({w}, {d}), init=gc.init.linear()), m.param("b1", {w}, init=gc.init.linear({d}))
W2, b2 = m.param("W2", ({k}, {w}), init=gc.init.linear()), m.param("b2", {k}, init=gc.init.linear({w}))
h = gc.relu(W1 @ x + b1)
logits = m.output("logits", W2 @ h + b2)
m.loss(gc.softmax_cross_entropy(logits, label))
'''

# Runs in a fresh process with GRADC_CACHE_DIR pointing at an empty folder.
WORKER = r'''
import json, os, re, resource, subprocess, sys, time
import sympy                                   # imports are not part of the timing
import gradc, gradc.api, gradc.autodiff, gradc.build, gradc.codegen.c, gradc.ir
phase = {"differentiate": 0.0, "render": 0.0, "cc": 0.0}


def timed(fn, key):
    def f(*a, **kw):
        t = time.perf_counter()
        try:
            return fn(*a, **kw)
        finally:
            phase[key] += time.perf_counter() - t
    return f


gradc.autodiff.differentiate = timed(gradc.autodiff.differentiate, "differentiate")
gradc.codegen.c.render = timed(gradc.codegen.c.render, "render")
subprocess.run = timed(subprocess.run, "cc")
path, dtype = sys.argv[1], sys.argv[2]


def cpu():
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


c0, t0 = cpu(), time.perf_counter()
model = gradc.api.load_model_file(path)
entry, meta = gradc.api.build_model(model, dtype)
total, cpu_s = time.perf_counter() - t0, cpu() - c0
c = open(os.path.join(entry, meta["prefix"] + ".c"), "rb").read()
print(json.dumps(dict(total=total, cpu=cpu_s, c_bytes=len(c), c_lines=c.count(b"\n"),
                      c_norm_bytes=len(re.sub(rb"[0-9]+", b"0", c)),
                      n_params=meta["n_params"], **phase)))
'''


def measure(width, dtype="float64", python=sys.executable):
    """One cold compile of the 32-width-10 MLP, in a fresh process and cache."""
    with tempfile.TemporaryDirectory(prefix="gradc-bench-") as tmp:
        path = os.path.join(tmp, "mlp.py")
        with open(path, "w") as f:
            f.write(MODEL.format(d=INPUT, w=width, k=CLASSES))
        env = dict(os.environ, GRADC_CACHE_DIR=os.path.join(tmp, "cache"))
        p = subprocess.run([python, "-c", WORKER, path, dtype], capture_output=True, text=True, env=env,
                           timeout=600)
        if p.returncode != 0:
            raise RuntimeError(f"compiling width {width} failed:\n{p.stderr}")
        r = json.loads(p.stdout.strip().splitlines()[-1])
    r["width"] = width
    return r


def measure_all(widths, repeat, dtype):
    """Round-robin over the widths ``repeat`` times (so slow spells hit every width alike); the best of each."""
    runs = {w: [] for w in widths}
    for _ in range(repeat):
        for w in widths:
            runs[w].append(measure(w, dtype))
    rows = []
    for w in widths:
        rs = runs[w]
        sizes = {(r["c_bytes"], r["c_lines"]) for r in rs}
        if len(sizes) != 1:
            raise RuntimeError(f"width {w}: the generated .c differs between cold compiles: {sizes}")
        best = min(rs, key=lambda r: r["total"])
        rows.append(dict(best, total=best["total"], cpu=min(r["cpu"] for r in rs),
                         wall_runs=[r["total"] for r in rs], cpu_runs=[r["cpu"] for r in rs]))
    return rows


def check(rows, base=BASE, factor=TIME_FACTOR):
    """The failures (strings) of rows (dicts with width, cpu, c_lines, c_norm_bytes), from ``base`` up."""
    by = {r["width"]: r for r in rows}
    if base not in by:
        return [f"width {base} was not measured: it is the reference"]
    ref, bad = by[base], []
    for r in rows:
        if r["width"] < base:
            continue
        w = r["width"]
        if r["c_lines"] > ref["c_lines"]:
            bad.append(f"width {w}: {r['c_lines']} lines of C, more than width {base}'s {ref['c_lines']}")
        if r["c_norm_bytes"] > ref["c_norm_bytes"]:
            bad.append(f"width {w}: {r['c_norm_bytes']} bytes of C (digits collapsed), more than width "
                       f"{base}'s {ref['c_norm_bytes']}")
        if r["cpu"] > factor * ref["cpu"]:
            bad.append(f"width {w}: compile took {r['cpu']:.2f} CPU s, more than {factor}x width {base}'s "
                       f"{ref['cpu']:.2f} CPU s")
    return bad


def table(rows, dtype):
    out = [f"2-layer MLP {INPUT}-W-{CLASSES}, ReLU, softmax CE, {dtype}; cold cache, fresh process each; "
           "times exclude imports",
           "",
           "| width W | params | compile CPU s | compile wall s | lower s | differentiate s | render s "
           "| C compiler s | .c bytes | .c lines |",
           "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        front = r["total"] - r["differentiate"] - r["render"] - r["cc"]
        out.append(f"| {r['width']} | {r['n_params']} | {r['cpu']:.2f} | {r['total']:.2f} | {front:.2f} "
                   f"| {r['differentiate']:.2f} | {r['render']:.2f} | {r['cc']:.2f} | {r['c_bytes']} "
                   f"| {r['c_lines']} |")
    out.append("")
    out.append("(phases are wall seconds of the fastest run; CPU s includes the C compiler's processes)")
    return "\n".join(out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--widths", default="16,64,256,1024", help="comma-separated hidden widths (default %(default)s)")
    ap.add_argument("--repeat", type=int, default=3, help="cold compiles per width; the fastest counts")
    ap.add_argument("--dtype", choices=("float64", "float32"), default="float64")
    ap.add_argument("--json", help="also write the measurements to this file")
    args = ap.parse_args(argv)
    widths = sorted({int(w) for w in args.widths.split(",") if w.strip()})
    if BASE not in widths:
        ap.error(f"--widths must include {BASE}, the reference width")
    rows = measure_all(widths, max(1, args.repeat), args.dtype)
    print(table(rows, args.dtype))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    bad = check(rows)
    print()
    if bad:
        print("FAIL: source size or compile time grows with the width:")
        for b in bad:
            print("  - " + b)
        return 1
    print(f"OK: from width {BASE} up, the .c does not grow and compile time stays within "
          f"{TIME_FACTOR}x width {BASE}'s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
