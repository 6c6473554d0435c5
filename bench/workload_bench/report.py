"""The report of a run: ``markdown`` (the tables), ``plot`` (log-scale bars) and the metadata that
goes with them (``versions`` of the peers, ``git_state`` of gradc, ``cpu_name``, ``loadavg``)."""
import importlib
import importlib.metadata as md
import json
import os
import platform
import subprocess
import sys

import numpy as np

from .definitions import LABELS, PEERS, ROOT


def fmt_us(us):
    if us >= 1e6:
        return f"{us / 1e6:.2f} s"
    if us >= 1e4:
        return f"{us / 1e3:,.1f} ms"
    if us >= 100:
        return f"{us:,.0f} µs"
    return f"{us:.1f} µs"


def fmt_ratio2(r):
    if r < 0.01:
        return f"1/{1 / r:,.0f}"
    if r >= 100:
        return f"{r:,.0f}"
    if r >= 10:
        return f"{r:.1f}"
    return f"{r:.2f}"


def markdown(results, meta):
    fws = ["gradc"] + [p for p in PEERS if p in meta["peers"]]
    L = ["# gradc and its peers on the shared workloads", ""]
    L.append(f"{meta['when']}, {meta['machine']} (load average {meta['load']} at the end); gradc at "
             f"{meta['commit']}; Python {meta['python']}, " + ", ".join(
                 f"{k} {v}" for k, v in meta["versions"].items()) + f". Wall time {meta['wall_s']:.0f} s.")
    L.append(f"Data: {meta['data']}. One thread everywhere, {meta.get('pinned', 'not pinned')}; "
             f"one step = forward + backward over one minibatch "
             f"+ optimizer update; median of {meta['steps']} steps per framework after {meta['warmup']} warm-up "
             f"steps, the frameworks interleaved in {meta['rounds']} rounds.")
    L.append(f"Machine, single thread, numpy 1024x1024 matmul: **SGEMM {meta['sgemm']:.1f} GFLOP/s, "
             f"DGEMM {meta['dgemm']:.1f} GFLOP/s**.")
    L.append("")
    L.append("## Time per training step (median; in parentheses gradc / peer, above 1 means gradc is slower)")
    L.append("")
    L.append("| workload | dtype | batch | " + " | ".join(LABELS[f] for f in fws) + " |")
    L.append("|---|---|---:|" + "---:|" * len(fws))
    for r in results:
        g = r["frameworks"]["gradc"]["median_us"]
        cells = []
        for f in fws:
            fr = r["frameworks"].get(f)
            if fr is None:
                cells.append("skipped" if f in r["skipped"] else "")
            elif f == "gradc":
                cells.append(f"**{fmt_us(g)}**")
            else:
                extra = " (f64)" if fr["dtype"] != r["dtype"] else ""
                n = f", {fr['steps']} steps" if f == "micrograd" else ""
                cells.append(f"{fmt_us(fr['median_us'])} ({fmt_ratio2(g / fr['median_us'])}){extra}{n}")
        L.append(f"| {r['id']} {r['title']} | {r['dtype']} | {r['batch']} | " + " | ".join(cells) + " |")
    L.append("")
    L.append("## Compile / build time (s)")
    L.append("")
    L.append("| workload | gradc cold compile | gradc warm load | JAX jit (trace + compile + first call) "
             "| torch.compile (first call) | CasADi SX + codegen + gcc |")
    L.append("|---|---:|---:|---:|---:|---:|")
    for r in results:
        fr = r["frameworks"]
        g = fr["gradc"]
        cs = [fr.get(k, {}).get("compile_s") for k in ("jax", "torch_compile", "casadi")]
        L.append(f"| {r['id']} | {g['compile_s']:.2f} | {g['warm_s']:.3f} | "
                 + " | ".join("" if c is None else f"{c:.2f}" for c in cs) + " |")
    L.append("")
    L.append("gradc: `gradc.load` in this process with a fresh, empty `GRADC_CACHE_DIR` (imports done "
             "beforehand); warm: the same call again. torch.compile: the first call of the compiled step "
             "(dynamo + inductor for the forward, its backward and the SGD update, with the process's affinity). "
             "PyTorch eager, numpy and micrograd have nothing to compile.")
    L.append("")
    L.append("## Arithmetic rate")
    L.append("")
    L.append("| workload | MFLOP / step | gradc GFLOP/s | fastest peer | its GFLOP/s | gradc, % of machine GEMM |")
    L.append("|---|---:|---:|---|---:|---:|")
    for r in results:
        fr = r["frameworks"]
        peers = [(v["median_us"], k) for k, v in fr.items() if k != "gradc"]
        best = min(peers) if peers else None
        peak = meta["dgemm"] if r["dtype"] == "float64" else meta["sgemm"]
        gg = fr["gradc"]["gflops"]
        L.append(f"| {r['id']} | {r['flops'] / 1e6:.3f} | {gg:.2f} | "
                 + (f"{LABELS[best[1]]} | {fr[best[1]]['gflops']:.2f}" if best else " | ")
                 + f" | {100 * gg / peak:.1f}% of {'DGEMM' if r['dtype'] == 'float64' else 'SGEMM'} |")
    L.append("")
    L.append("FLOPs are GEMM-equivalent: 2·B·fan_in·fan_out per layer forward, the same for dW and for dX "
             "(not for the first layer), W5 ≈ 12·B·rank, plus 2 per parameter for SGD, 10 for Adam; "
             "elementwise work is not counted. W6 counts its convolutions the same way, by multiply-adds per "
             "sample in the forward pass (conv1 24·24·6·25, conv2 8·8·16·150, then 256·120, 120·84, 84·10): "
             "2·B·MACs for the forward pass, again for each layer's weight gradient, again for each input "
             "gradient but conv1's; pooling and ReLU are not counted.")
    L.append("")
    L.append("## Where gradc's step goes (median µs, timed apart on batch 0)")
    L.append("")
    L.append("| workload | whole step, `opt.train_step` | of which the C kernel | Python around the kernel "
             "| unfused: `loss_and_grad` | + `opt.step` | step on 2 threads |")
    L.append("|---|---:|---:|---:|---:|---:|---:|")
    for r in results:
        pt = r.get("gradc_parts", {})
        whole, kern = pt.get("step"), pt.get("C kernel")
        f = lambda v: "" if v is None else fmt_us(v)  # noqa: E731
        L.append(f"| {r['id']} | {f(whole)} | {f(kern)} | "
                 f"{f(None if kern is None or whole is None else whole - kern)} | {f(pt.get('loss_and_grad'))} | "
                 f"{f(pt.get('opt.step'))} | {f(pt.get('step, 2 threads'))} |")
    L.append("")
    L.append("The pieces are timed apart from the peers, interleaved with one another, on batch 0. A gradc step is "
             "`opt.train_step(mod, **batch)`: for plain SGD and Adam one call into the generated C (loss, "
             "gradient and update; no gradient dict). The C kernel is the generated `loss_grad` alone (called "
             "through cffi with its buffers prepared once); the step minus the kernel is the update plus what "
             "Python adds (argument checks, the cffi call). For comparison, the unfused path: "
             "`mod.loss_and_grad` (which returns a gradient dict) and `opt.step` (numpy). Last, the fused step with "
             "the batch split over two threads (`mod.set_threads(2)`, OpenMP): an option, not part of the "
             "single-thread comparison above, and not measured when the process is pinned to one core "
             "(`--no-pin` to have it).")
    L.append("")
    L.append("## Correctness: loss over the first steps from the shared initial parameters")
    L.append("")
    L.append("| workload | peer | steps | peer loss at the last step | gradc loss | max rel diff | tol | |")
    L.append("|---|---|---:|---:|---:|---:|---:|---|")
    for r in results:
        for name, c in r["check"].items():
            L.append(f"| {r['id']} | {LABELS[name]} | {c['steps']} | {c['loss']:.10g} | {c['gradc_loss']:.10g} | "
                     f"{c['rel']:.1e} | {c['tol']:.0e} | {'ok' if c['ok'] else '**MISMATCH**'} |")
    refs = [(r, name, c) for r in results for name, c in r.get("ref_check", {}).items()]
    if refs:
        L += ["", "## Float64 trajectory against the reference stored in the data", "",
              "| workload | framework (float64) | steps | first loss | reference | last loss | reference "
              "| max abs diff | tol | |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
        for r, name, c in refs:
            L.append(f"| {r['id']} | {LABELS[name]} | {c['steps']} | {c['first']:.12f} | {c['ref_first']:.12f} | "
                     f"{c['last']:.12f} | {c['ref_last']:.12f} | {c['max_abs']:.1e} | {c['tol']:.0e} | "
                     f"{'ok' if c['ok'] else '**MISMATCH**'} |")
        L += ["", "Each framework rebuilt in float64 (gradc: a second module, compiled with `dtype=\"float64\"`), "
              "SGD from the shared initial parameters over the workload's batches; `ref_losses_f64` is stored in "
              "the data file (the shared file: PyTorch float64; generated data: the numpy LeNet in float64)."]
    notes = []
    for r in results:
        for name, why in r["skipped"].items():
            if name not in meta["missing"]:
                notes.append(f"- {r['id']} {LABELS[name]}: skipped, {why}")
        for name, fr in r["frameworks"].items():
            if fr.get("note"):
                notes.append(f"- {r['id']} {LABELS[name]}: {fr['note']}")
    for name, why in meta["missing"].items():
        notes.append(f"- {LABELS[name]}: {why}")
    if notes:
        L += ["", "## Notes", ""] + notes
    return "\n".join(L) + "\n"


def plot(results, meta, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib not installed: no chart"
    fws = ["gradc"] + [p for p in PEERS if p in meta["peers"]]
    fws = [f for f in fws if any(f in r["frameworks"] for r in results)]
    fig, ax = plt.subplots(figsize=(max(7, 1.9 * len(results)), 4.6))
    w = 0.8 / len(fws)
    for j, f in enumerate(fws):
        xs, ys = [], []
        for i, r in enumerate(results):
            if f in r["frameworks"]:
                xs.append(i + (j - (len(fws) - 1) / 2) * w)
                ys.append(r["frameworks"][f]["median_us"])
        bars = ax.bar(xs, ys, w, label=LABELS[f], color=None if f != "gradc" else "black")
        for b, y in zip(bars, ys):
            ax.text(b.get_x() + b.get_width() / 2, y * 1.08, fmt_us(y).replace(" ", "\n"), ha="center",
                    va="bottom", fontsize=5.5)
    ax.set_yscale("log")
    ax.set_xticks(range(len(results)))
    ax.set_xticklabels([f"{r['id']}\n{r['dtype']}, batch {r['batch']}" for r in results], fontsize=8)
    ax.set_ylabel("median time per training step (µs, log scale)")
    ax.set_title("gradc and peers, one thread, per training step (lower is better)", fontsize=10)
    ax.legend(fontsize=7, ncol=3)
    ax.grid(axis="y", which="both", alpha=0.3)
    lo, hi = ax.get_ylim()
    ax.set_ylim(lo, hi * 4)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return None


def versions(peers):
    v, missing = {"numpy": np.__version__}, {}
    mods = dict(torch="torch", jax="jax", micrograd="micrograd", casadi="casadi")
    try:
        v["gradc"] = md.version("gradc")
    except md.PackageNotFoundError:
        pass
    for p in peers:
        if p not in mods:
            continue
        try:
            m = importlib.import_module(mods[p])
        except ImportError as e:
            missing[p] = f"not importable ({e}); `pip install {mods[p]}` to include it"
            continue
        try:
            v[p] = getattr(m, "__version__", None) or md.version(mods[p])
        except md.PackageNotFoundError:
            v[p] = "?"
    return v, missing


def git_state():
    """The commit the gradc under test comes from, and whether its sources have local changes."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "gradc", "templates"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if not head:
        return "unknown"
    return head + (" with local changes to gradc/ or templates/" if dirty else "")


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def loadavg():
    try:
        return "/".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "?"


def log(msg):
    """A progress line, on stderr (the report goes to stdout)."""
    print(msg, file=sys.stderr, flush=True)


def write_report(out, stem, md_text, meta, results, plot_to=None):
    """``OUT/STEM.md`` and ``OUT/STEM.json`` (the meta and results) written and the table printed;
    with ``plot_to(path)``, the chart as ``OUT/STEM.png`` (a reason it could not be drawn is logged)."""
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, stem + ".md"), "w") as f:
        f.write(md_text)
    with open(os.path.join(out, stem + ".json"), "w") as f:
        json.dump(dict(meta=meta, results=results), f, indent=1, default=float)
    if plot_to is not None:
        why = plot_to(os.path.join(out, stem + ".png"))
        if why:
            log(why)
    print(md_text)
