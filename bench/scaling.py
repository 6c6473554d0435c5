#!/usr/bin/env python3
"""How cost grows: one training step of gradc and its peers against width and batch size.

    python bench/scaling.py [--out bench/results] [--quick] [--peers numpy,torch,jax]

Two sweeps, float32, SGD, one thread, the whole process pinned to one core:

- a 2-layer MLP D-W-10 (ReLU, softmax cross-entropy; D = 784 by default, so that width 256 is W3's
  MNIST-sized MLP, ``examples/mnist_mlp``): the hidden width W in 64 ... 2048 at batch 128, and the
  batch B in 1 ... 1024 at width 256. gradc's model files, one per width, are written into a
  temporary folder from ``compile_width.MODEL`` (the same template, with another input size);
- W6's LeNet-5 (``bench/workload_models/w6_lenet.py``) at batch 1 ... 512.

For each point: the median time of one training step (forward + backward + SGD update) in gradc (the
fused ``opt.train_step(mod, **batch)`` of ``gradc.load(model_file, dtype="float32")``), PyTorch eager,
JAX jit and numpy by hand (the MLP only), built by the peers of ``bench/workload_bench`` (the same
step functions as ``bench/workloads.py``), first checked against gradc's loss over a few steps from
the shared initial parameters, then timed interleaved in shuffled rounds, each for about
``--seconds`` per point. Each step's arithmetic (GEMM-equivalent FLOPs, ``Workload.flops``) as a rate,
beside the machine's single-thread SGEMM rate (numpy 1024x1024 matmul) measured in the same run, at
its start and at its end.

It writes ``OUT/scaling.md`` (printed too), ``OUT/scaling.json`` and ``OUT/scaling.png`` (step time
against width, GFLOP/s against width with the SGEMM line, step time against batch; log axes; needs
matplotlib).

Options: ``--quick`` (a few points, short timing: a smoke test), ``--peers`` (comma-separated from
numpy, torch, jax, or ``none``), ``--widths``, ``--width-batch``, ``--batches``, ``--batch-width``,
``--lenet-batches`` (``none`` to leave LeNet out), ``--input`` (D), ``--seconds``, ``--rounds``,
``--clock cpu`` (time by the process's CPU time rather than wall time: on a shared, loaded machine,
where another process takes slices of the pinned core, a step longer than a slice is otherwise
charged for them), ``--no-plot``.
"""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:               # run from anywhere, or imported by path: the parts live beside it
    sys.path.insert(0, HERE)

# first: one thread everywhere (workload_bench sets the variables BLAS, OpenMP and XLA read on import)
import workload_bench  # noqa: E402, F401

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import gc  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from compile_width import MODEL  # noqa: E402   the 2-layer MLP template, {d}-{w}-{k}
from workload_bench.definitions import LABELS, Workload, _linear_init, generate_data, workloads  # noqa: E402
from workload_bench.peers import build_gradc, build_jax, build_numpy, build_torch  # noqa: E402
from workload_bench.report import (cpu_name, fmt_ratio2, fmt_us, git_state, loadavg, log, versions,  # noqa: E402
                                    write_report)
from workload_bench.timing import CLOCKS, Skip, check, gemm_rate, pin_to_one_core, time_steps  # noqa: E402

PEERS = ("numpy", "torch", "jax")
BUILDERS = dict(numpy=build_numpy, torch=build_torch, jax=build_jax)
LENET_PEERS = ("torch", "jax")          # numpy by hand: the MLP only
CLASSES, LR = 10, 0.01
FULL = dict(widths="64,128,256,512,1024,2048", batches="1,4,16,64,256,1024", lenet_batches="1,4,16,64,128,256,512",
            seconds=1.0, rounds=5, check_steps=3, min_steps=10, max_steps=3000)
QUICK = dict(widths="64,256", batches="16", lenet_batches="16",
             seconds=0.05, rounds=2, check_steps=2, min_steps=3, max_steps=100)


# ---------------------------------------------------------------------------------------------- the points

def mlp_points(args, folder):
    """The MLP points as (label, Workload), one per distinct (width, batch); gradc's model files in ``folder``."""
    pts = sorted({(w, args.width_batch) for w in args.widths} | {(args.batch_width, b) for b in args.batches})
    if not pts:
        return []
    rng = np.random.default_rng(0)
    n = max(2048, 2 * max(b for _, b in pts))
    X, y = rng.random((n, args.input)), rng.integers(0, CLASSES, n)
    files = {}
    out = []
    for w, b in pts:
        if w not in files:
            files[w] = os.path.join(folder, f"mlp_{args.input}_{w}_{CLASSES}.py")
            with open(files[w], "w") as f:
                f.write(MODEL.format(d=args.input, w=w, k=CLASSES))
        layers = ((args.input, w), (w, CLASSES))
        init = _linear_init(np.random.default_rng([0, w]), layers)
        wl = Workload(f"MLP-W{w}-B{b}", f"MLP {args.input}-{w}-{CLASSES}", "float32", files[w], "mlp", "sgd", LR,
                      "", layers=layers, head="ce", peers=PEERS, names=dict(x="x", y="label"),
                      data=dict(X=X, y=y, **init), batches=_batches(rng, n, b))
        out.append((("mlp", w, b), wl))
    return out


def lenet_points(args):
    if not args.lenet_batches:
        return []
    (w6,) = [w for w in workloads() if w.id == "W6"]
    generate_data(w6, 0)                               # 1024 images, PyTorch's default init
    w6.peers = LENET_PEERS
    rng = np.random.default_rng(1)
    n = len(w6.data["X"])
    return [(("lenet", 0, b), dataclasses.replace(w6, id=f"W6-B{b}", batches=_batches(rng, n, b)))
            for b in args.lenet_batches]


def _batches(rng, n, b):
    """Up to 8 disjoint batches of ``b`` from ``n`` samples (index arrays), step k takes batch k mod their number."""
    if b > n:
        raise ValueError(f"batch {b} is larger than the {n} samples")
    nb = max(1, min(8, n // b))
    return list(rng.permutation(n)[:nb * b].reshape(nb, b))


# ---------------------------------------------------------------------------------------------- one point

def run_point(key, wl, args, log, cache_dirs, cache):
    kind, width, batch = key
    res = dict(kind=kind, width=width, batch=batch, title=wl.title, flops=wl.flops(), n_params=int(wl.n_params),
               frameworks={}, skipped={}, check={})
    log(f"{wl.title}, batch {batch} ({wl.n_params:,} parameters, {wl.flops() / 1e6:.2f} MFLOP per step)")
    try:
        runners = [build_gradc(wl, cache_dirs, parts=False, cache=cache)]
    except Exception as e:  # noqa: BLE001  a compile that fails spoils this point, not the sweep
        res["error"] = f"gradc failed: {type(e).__name__}: {e}"
        log(f"  {res['error']}")
        return res
    for name in (p for p in PEERS if p in args.peers and p in wl.peers):
        try:
            runners.append(BUILDERS[name](wl))
        except Exception as e:  # noqa: BLE001  Skip (not installed), or a peer that breaks: the others go on
            res["skipped"][name] = str(e) if isinstance(e, Skip) else f"failed: {type(e).__name__}: {e}"
            log(f"  {name}: skipped, {res['skipped'][name]}")
    # the losses over the first steps from the shared init (these steps also warm up)
    res["check"], traj = check(runners, args.check_steps, args.check_steps)
    for name, c in res["check"].items():
        if not c["ok"]:
            log(f"  check {name}: MISMATCH, loss {c['loss']:.8g} vs gradc {c['gradc_loss']:.8g} "
                f"(max rel diff {c['rel']:.1e})")
    counts = {}
    for r in runners:
        r.run(1)
        est = statistics.median(traj[r.name][1][1:] or traj[r.name][1])   # s per step (with the loss read back)
        counts[r.name] = max(args.min_steps, min(args.max_steps, int(args.seconds / max(est, 1e-7))))
    times = time_steps(runners, counts, args.rounds, args.seed, CLOCKS[args.clock][0])
    for r in runners:
        t = sorted(times[r.name])
        med = statistics.median(t)
        res["frameworks"][r.name] = dict(median_us=med, p10_us=t[int(0.1 * len(t))],
                                         p90_us=t[min(len(t) - 1, int(0.9 * len(t)))], steps=len(t),
                                         compile_s=r.compile_s, gflops=wl.flops() / med / 1e3)
    log("  " + ", ".join(f"{LABELS[n]} {fmt_us(f['median_us'])}" for n, f in res["frameworks"].items()))
    return res


# ---------------------------------------------------------------------------------------------- the report

def sweeps(results, meta):
    """(title, label of the swept variable, its key, the rows) of each sweep, rows in order."""
    a = meta["args"]
    mlp = [r for r in results if r["kind"] == "mlp"]
    out = []
    w = sorted((r for r in mlp if r["batch"] == a["width_batch"] and r["width"] in a["widths"]),
               key=lambda r: r["width"])
    if w:
        out.append((f"MLP {a['input']}-W-{CLASSES}, batch {a['width_batch']}, against the width W", "width W",
                    "width", w))
    b = sorted((r for r in mlp if r["width"] == a["batch_width"]), key=lambda r: r["batch"])
    if b and a["batches"]:
        out.append((f"MLP {a['input']}-{a['batch_width']}-{CLASSES}, against the batch B", "batch B", "batch", b))
    le = sorted((r for r in results if r["kind"] == "lenet"), key=lambda r: r["batch"])
    if le:
        out.append(("LeNet-5 (W6), against the batch B", "batch B", "batch", le))
    return out


def slower(results):
    """[(row, peer, gradc_us / peer_us)] wherever a peer's step is faster than gradc's."""
    out = []
    for r in results:
        fr = r["frameworks"]
        if "gradc" not in fr:
            continue
        g = fr["gradc"]["median_us"]
        for name, v in fr.items():
            if name != "gradc" and v["median_us"] < g:
                out.append((r, name, g / v["median_us"]))
    return out


def markdown(results, meta):
    fws = ["gradc"] + [p for p in PEERS if p in meta["peers"]]
    sg = meta["sgemm"]
    L = ["# How cost grows: one training step against width and batch", ""]
    L.append(f"{meta['when']}, {meta['machine']} (load average {meta['load_start']} at the start, "
             f"{meta['load_end']} at the end); gradc at {meta['commit']}; Python {meta['python']}, "
             + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()) + f". Wall time {meta['wall_s']:.0f} s.")
    L.append(f"float32, SGD (lr {LR}), one thread everywhere, {meta['pinned']}; one step = forward + backward over "
             f"one minibatch + the SGD update (gradc: the fused `opt.train_step`); timed by "
             f"{CLOCKS[meta['clock']][2]}; median over about "
             f"{meta['seconds']:g} s of steps per framework and point (at least {meta['min_steps']}), the frameworks "
             f"interleaved in {meta['rounds']} shuffled rounds, after {meta['check_steps']} steps checked against "
             f"gradc's losses.")
    L.append(f"Machine, single thread, numpy 1024x1024 float32 matmul: **SGEMM {sg:.1f} GFLOP/s** "
             f"({meta['sgemm_start']:.1f} at the start, {meta['sgemm_end']:.1f} at the end; the higher counts).")
    for title, label, key, rows in sweeps(results, meta):
        cols = [f for f in fws if any(f in r["frameworks"] for r in rows)]
        L += ["", f"## {title}", "", "Time per step (median; in parentheses gradc / peer, above 1 means gradc is "
              "slower):", "", f"| {label} | MFLOP / step | " + " | ".join(LABELS[f] for f in cols) + " |",
              "|---:|---:|" + "---:|" * len(cols)]
        for r in rows:
            cells = []
            fr = r["frameworks"]
            g = fr.get("gradc", {}).get("median_us")
            for f in cols:
                if f not in fr:
                    cells.append(r.get("error", "") if f == "gradc" else
                                 ("skipped" if f in r["skipped"] else ""))
                elif f == "gradc":
                    cells.append(f"**{fmt_us(g)}**")
                else:
                    cells.append(f"{fmt_us(fr[f]['median_us'])} ({fmt_ratio2(g / fr[f]['median_us'])})")
            L.append(f"| {r[key]} | {r['flops'] / 1e6:,.2f} | " + " | ".join(cells) + " |")
        L += ["", "GFLOP/s (GEMM-equivalent FLOPs per step / median step time):", "",
              f"| {label} | " + " | ".join(LABELS[f] for f in cols) + " | gradc, % of SGEMM |",
              "|---:|" + "---:|" * (len(cols) + 1)]
        for r in rows:
            fr = r["frameworks"]
            cells = [f"{fr[f]['gflops']:.2f}" if f in fr else "" for f in cols]
            pct = f"{100 * fr['gradc']['gflops'] / sg:.1f}%" if "gradc" in fr else ""
            L.append(f"| {r[key]} | " + " | ".join(cells) + f" | {pct} |")
    sl = slower(results)
    L += ["", "## Where gradc is not the fastest", ""]
    if not sl:
        L.append("Nowhere: at every point gradc's step is the fastest.")
    for r, name, ratio in sl:
        where = (f"LeNet-5, batch {r['batch']}" if r["kind"] == "lenet" else
                 f"MLP width {r['width']}, batch {r['batch']}")
        L.append(f"- {where}: {LABELS[name]} {fmt_us(r['frameworks'][name]['median_us'])} against gradc's "
                 f"{fmt_us(r['frameworks']['gradc']['median_us'])} (gradc {ratio:.2f}x slower)")
    L += ["", "## Notes", "",
          "- FLOPs are GEMM-equivalent (as in `bench/workloads.py`): 2·B·fan_in·fan_out per dense layer forward, "
          "the same for dW and for dX (not for the first layer), plus 2 per parameter for SGD; LeNet's "
          "convolutions by their multiply-adds per sample (conv1 24·24·6·25, conv2 8·8·16·150), counted alike; "
          "elementwise work (ReLU, pooling, softmax) is not counted.",
          f"- The MLP's input is {meta['args']['input']} wide (MNIST's 28·28; width 256 is W3's "
          f"`examples/mnist_mlp`), random data, a softmax cross-entropy on 10 classes; its gradc model is "
          f"`compile_width.MODEL` written for each width. LeNet-5 is W6 (`bench/workload_models/w6_lenet.py`) on "
          f"its generated data; numpy by hand runs the MLP only.",
          "- gradc compiles each model once (a cold compile for the first point of a model file, then the "
          "module is loaded from the cache); the batch size is a run-time argument of the compiled step. JAX "
          "jits the step again for each batch shape; its compile is outside the timing, as gradc's."]
    for r in results:
        for name, why in r["skipped"].items():
            if name not in meta["missing"]:
                L.append(f"- {r['kind']} W{r['width']} B{r['batch']}, {LABELS[name]}: {why}")
        for name, c in r["check"].items():
            if not c["ok"]:
                L.append(f"- {r['kind']} W{r['width']} B{r['batch']}, {LABELS[name]}: **loss differs from gradc's** "
                         f"(max rel diff {c['rel']:.1e} over {c['steps']} steps)")
        if "error" in r:
            L.append(f"- {r['kind']} W{r['width']} B{r['batch']}: {r['error']}")
    for name, why in meta["missing"].items():
        L.append(f"- {LABELS[name]}: {why}")
    return "\n".join(L) + "\n"


def plot(results, meta, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import NullLocator
    except ImportError:
        return "matplotlib not installed: no chart"
    fws = ["gradc"] + [p for p in PEERS if p in meta["peers"]]
    colors = dict(gradc="black", numpy="tab:green", torch="tab:red", jax="tab:blue")
    sw = sweeps(results, meta)
    by_width = [s for s in sw if s[2] == "width"]
    by_batch = [s for s in sw if s[2] == "batch"]
    panels = (2 if by_width else 0) + (1 if by_batch else 0)
    if not panels:
        return "no points to plot"
    fig, axes = plt.subplots(1, panels, figsize=(5.2 * panels, 4.4), squeeze=False)
    axes = list(axes[0])

    def series(ax, rows, key, f, metric, **kw):
        pts = [(r[key], r["frameworks"][f][metric]) for r in rows if f in r["frameworks"]]
        if pts:
            xs, ys = zip(*pts)
            ax.plot(xs, ys, marker="o", ms=3.5, color=colors[f], **kw)

    if by_width:
        _, _, _, rows = by_width[0]
        for ax, metric, ylabel in ((axes[0], "median_us", "median time per step (µs)"),
                                   (axes[1], "gflops", "GFLOP/s (GEMM-equivalent)")):
            for f in fws:
                series(ax, rows, "width", f, metric, label=LABELS[f])
            ax.set_xlabel(f"hidden width W (MLP {meta['args']['input']}-W-{CLASSES}, batch "
                          f"{meta['args']['width_batch']})")
            ax.set_ylabel(ylabel)
        axes[1].axhline(meta["sgemm"], color="gray", ls=":", label=f"SGEMM 1 thread ({meta['sgemm']:.0f})")
        axes[0].set_title("step time against width", fontsize=10)
        axes[1].set_title("arithmetic rate against width", fontsize=10)
    if by_batch:
        ax = axes[-1]
        for title, _, _, rows in by_batch:
            lenet = rows[0]["kind"] == "lenet"
            for f in fws:
                series(ax, rows, "batch", f, "median_us", ls="--" if lenet else "-",
                       label=f"{LABELS[f]}, {'LeNet-5' if lenet else 'MLP ' + str(rows[0]['width'])}")
        ax.set_xlabel("batch B (solid: MLP, dashed: LeNet-5)")
        ax.set_ylabel("median time per step (µs)")
        ax.set_title("step time against batch", fontsize=10)
    ticks = [sorted({r["width"] for r in by_width[0][3]})] * 2 if by_width else []
    if by_batch:
        ticks.append(sorted({r["batch"] for s in by_batch for r in s[3]}))
    for ax, xs in zip(axes, ticks):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(xs, [str(x) for x in xs])
        ax.xaxis.set_minor_locator(NullLocator())
        ax.grid(which="both", alpha=0.3)
        ax.legend(fontsize=6.5)
    fig.suptitle(f"gradc and peers, float32, one thread, {meta['when']}"
                 + (" (CPU time)" if meta["clock"] == "cpu" else ""), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return None


# ---------------------------------------------------------------------------------------------- command line

def _ints(s, what, ap):
    if s.strip().lower() in ("", "none"):
        return []
    try:
        v = sorted({int(x) for x in s.split(",") if x.strip()})
    except ValueError:
        ap.error(f"{what}: comma-separated integers, or none")
    if any(x < 1 for x in v):
        ap.error(f"{what}: sizes must be at least 1")
    return v


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(HERE, "results"), help="output folder (default bench/results)")
    ap.add_argument("--quick", action="store_true", help="a few points, short timing (a smoke test)")
    ap.add_argument("--peers", default=",".join(PEERS), help="comma-separated from numpy, torch, jax, or 'none'")
    ap.add_argument("--widths", help=f"MLP hidden widths (default {FULL['widths']})")
    ap.add_argument("--width-batch", type=int, default=128, help="the batch of the width sweep (default 128)")
    ap.add_argument("--batches", help=f"MLP batch sizes (default {FULL['batches']})")
    ap.add_argument("--batch-width", type=int, default=256, help="the width of the batch sweep (default 256)")
    ap.add_argument("--lenet-batches", help=f"LeNet-5 batch sizes, or none (default {FULL['lenet_batches']})")
    ap.add_argument("--input", type=int, default=784, help="the MLP's input size D (default 784)")
    ap.add_argument("--seconds", type=float, help="timing per framework and point (default 1; --quick 0.05)")
    ap.add_argument("--rounds", type=int, help="interleaved rounds (default 5; --quick 2)")
    ap.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                    help="time the steps (and the SGEMM) by wall-clock time (default) or by the process's CPU "
                         "time, which other processes on a shared core barely move")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-plot", action="store_true")
    a = ap.parse_args(argv)
    d = QUICK if a.quick else FULL
    a.widths = _ints(a.widths if a.widths is not None else d["widths"], "--widths", ap)
    a.batches = _ints(a.batches if a.batches is not None else d["batches"], "--batches", ap)
    a.lenet_batches = _ints(a.lenet_batches if a.lenet_batches is not None else d["lenet_batches"],
                            "--lenet-batches", ap)
    a.seconds = d["seconds"] if a.seconds is None else a.seconds
    a.rounds = d["rounds"] if a.rounds is None else a.rounds
    a.check_steps, a.min_steps, a.max_steps = d["check_steps"], d["min_steps"], d["max_steps"]
    a.peers = () if a.peers.strip().lower() in ("", "none") else tuple(p.strip() for p in a.peers.split(","))
    bad = [p for p in a.peers if p not in PEERS]
    if bad:
        ap.error(f"unknown peer {bad[0]!r}; choose from {', '.join(PEERS)} or none")
    if a.rounds < 1 or a.seconds <= 0 or a.width_batch < 1 or a.batch_width < 1 or a.input < 1:
        ap.error("--rounds, --seconds, --width-batch, --batch-width and --input must be positive")
    return a


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    t_start = time.perf_counter()

    # before PyTorch, JAX or gradc start a thread: the threads started later inherit the affinity
    core = pin_to_one_core()
    pinned = (f"pinned to core {core} (os.sched_setaffinity, every thread of the process)" if core is not None
              else "not pinned (no os.sched_setaffinity here)")
    log(pinned)
    load_start = loadavg()
    vers, missing = versions(args.peers)
    sgemm_start = gemm_rate(np.float32, clock=CLOCKS[args.clock][1])
    log(f"single-thread SGEMM {sgemm_start:.1f} GFLOP/s")
    folder = tempfile.mkdtemp(prefix="gradc-scaling-")
    cache = os.path.join(folder, "cache")
    cache_dirs, results = [], []
    try:
        points = mlp_points(args, folder) + lenet_points(args)
        for key, wl in points:
            results.append(run_point(key, wl, args, log, cache_dirs, cache))
            gc.collect()
    finally:
        for d in cache_dirs + [folder]:
            shutil.rmtree(d, ignore_errors=True)
    sgemm_end = gemm_rate(np.float32, clock=CLOCKS[args.clock][1])
    meta = dict(when=time.strftime("%Y-%m-%d %H:%M"), machine=f"{cpu_name()}, {os.cpu_count()} cores",
                commit=git_state(), load_start=load_start, load_end=loadavg(), python=platform.python_version(),
                versions=vers, missing=missing, peers=args.peers, pinned=pinned,
                sgemm=max(sgemm_start, sgemm_end), sgemm_start=sgemm_start, sgemm_end=sgemm_end,
                clock=args.clock, seconds=args.seconds, rounds=args.rounds, check_steps=args.check_steps,
                min_steps=args.min_steps,
                args=dict(widths=args.widths, width_batch=args.width_batch, batches=args.batches,
                          batch_width=args.batch_width, lenet_batches=args.lenet_batches, input=args.input,
                          quick=args.quick),
                wall_s=time.perf_counter() - t_start)
    write_report(args.out, "scaling", markdown(results, meta), meta, results,
                 None if args.no_plot else (lambda path: plot(results, meta, path)))
    for r in results:
        for name, c in r["check"].items():
            if not c["ok"]:
                log(f"WARNING: {r['kind']} W{r['width']} B{r['batch']} {LABELS[name]}: loss differs from gradc's")
    log(f"done in {time.perf_counter() - t_start:.0f} s; wrote {args.out}/scaling.md")
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
