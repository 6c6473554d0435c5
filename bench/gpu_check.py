"""The GPU check: every example built for CUDA and checked against the C target; W3 and W5 timed
beside PyTorch on the same GPU. Run it through ``bench/gpu_check.sh`` on a machine with an NVIDIA GPU.

Checks, for each example model (and the bench-local workload models), float64 and float32:

* loss, gradient and outputs of the CUDA build against the C build on batches of 1, 33 and 300
  random samples: relative 1e-10 (float64) and 1e-4 (float32);
* 20 SGD steps on device parameters (``mod.to_device``, ``mod.sgd_step``) against the C target's
  ``sgd_step`` on the same batches;
* two identical calls give identical bits (the reductions have a fixed order, no atomics).

Timing (float32, median per training step after a warm-up): W3 (784-256-10, batch 128, SGD) and W5
(matrix factorization, batch 1024, SGD) with the parameters on the device, each step copying its
minibatch in and its loss out; PyTorch on the same GPU does the same (batch ``.to(cuda)``, loss
``.item()``); the C target on one CPU core for reference.

Writes ``OUT/gpu_check.md`` (printed too) and exits 1 when a check fails. With
``GRADC_CUDA_EMULATE=1`` it runs anywhere (the CUDA source built as C++ on the CPU), which is how
the script itself is tested.
"""
import argparse
import glob
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, ROOT)

import gradc  # noqa: E402
from workload_bench.definitions import generate_data, load_data, workloads  # noqa: E402
from workload_bench.peers.torch_peer import torch_mf, torch_mlp  # noqa: E402

TOL = {"float64": 1e-10, "float32": 1e-4}
SEVERAL = {"risk": ("logreg", "mlp")}


def models():
    out = []
    for path in sorted(glob.glob(os.path.join(ROOT, "examples", "*", "model.py"))) + \
            sorted(glob.glob(os.path.join(HERE, "workload_models", "*.py"))):
        name = os.path.basename(os.path.dirname(path)) if path.endswith("model.py") else \
            os.path.splitext(os.path.basename(path))[0]
        for m in SEVERAL.get(name, (None,)):
            out.append((name if m is None else f"{name}-{m}", path, m))
    return out


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(1.0, float(np.max(np.abs(b)))))


def random_data(c, n, rng, dtype):
    out = {}
    for a in c.meta["inputs"] + c.meta["targets"]:
        shape = (n, *a["shape"])
        if a["dtype"] == "int32":
            bounds = [b for b in c.int_bounds.get(a["name"], []) if b]
            out[a["name"]] = rng.integers(0, min(bounds) if bounds else 3, shape).astype(np.int32)
        else:
            out[a["name"]] = rng.uniform(0, 1, shape).astype(dtype)
    return out


def check_model(name, path, model, dtype, sizes):
    t0 = time.perf_counter()
    mc = gradc.load(path, dtype=dtype, model=model)
    mg = gradc.load(path, dtype=dtype, model=model, target="cuda")
    build = time.perf_counter() - t0
    c = mc._compiled
    rng = np.random.default_rng(0)
    p = mc.init_params(seed=0)
    err = 0.0
    for n in sizes:
        data = random_data(c, n, rng, dtype)
        L1, g1 = mc.loss_and_grad(p, **data)
        L2, g2 = mg.loss_and_grad(p, **data)
        err = max(err, rel(L2, L1), *(rel(g2[k], g1[k]) for k in g1))
        ins = {a["name"]: data[a["name"]] for a in c.meta["inputs"]}
        if ins:
            o1, o2 = mc.forward(p, **ins), mg.forward(p, **ins)
            err = max(err, *(rel(o2[k], o1[k]) for k in o1))
    ref, dp = p.copy(), mg.to_device(p)
    batches = [random_data(c, 64, rng, dtype) for _ in range(20)]
    lr = 0.01 if dtype == "float32" else 0.05
    for b in batches:
        mc.sgd_step(ref, lr, **b)
        mg.sgd_step(dp, lr, **b)
    back = mg.to_host(dp)
    train_err = max(rel(back[k], ref[k]) for k in ref)
    data = random_data(c, 300, rng, dtype)
    (La, ga), (Lb, gb) = mg.loss_and_grad(p, **data), mg.loss_and_grad(p, **data)
    same = La == Lb and np.array_equal(ga.flat, gb.flat)
    ok = err <= TOL[dtype] and train_err <= 10 * TOL[dtype] and same
    return dict(name=name, dtype=dtype, build_s=build, err=err, train_err=train_err, deterministic=same, ok=ok)


# ---- timing ------------------------------------------------------------------------------------

def median_us(step, steps, warmup):
    for k in range(warmup):
        step(k)
    times = []
    for k in range(steps):
        t0 = time.perf_counter()
        step(k)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e6


def gradc_steps(wl, target):
    mod = gradc.load(wl.model, dtype=wl.dtype, target=target)
    dt = np.dtype(wl.dtype)
    p = mod.init_params(seed=0)
    for name in p:
        v = wl.init[name]
        p[name] = (v.T if wl.kind == "mlp" and v.ndim == 2 else v).astype(dt)
    nm = wl.names
    if wl.kind == "mlp":
        batches = [{nm["x"]: np.ascontiguousarray(X, dt), nm["y"]: y.astype(np.int32)} for X, y in wl.mlp_batches()]
    else:
        mu = float(wl.data["mu"])
        batches = [{nm["u"]: u.astype(np.int32), nm["i"]: i.astype(np.int32), nm["mu"]: np.full(len(u), mu, dt),
                    nm["r"]: r.astype(dt)} for u, i, r in wl.mf_batches()]
    params = mod.to_device(p) if target == "cuda" else p
    nb = len(batches)
    return lambda k: mod.sgd_step(params, wl.lr, **batches[k % nb])


def torch_gpu_step(wl):
    try:
        import torch
    except ImportError:
        return None, "PyTorch is not installed"
    if not torch.cuda.is_available():
        return None, "PyTorch sees no CUDA device"
    dev = torch.device("cuda")
    tdt = getattr(torch, wl.dtype)
    if wl.kind == "mf":
        params, loss_of, batches = torch_mf(wl, torch, dev)
        opt = torch.optim.SGD(params, lr=wl.lr)

        def step(k):
            opt.zero_grad()
            loss = loss_of(*(t.to(dev) for t in batches[k % len(batches)]))
            loss.backward()
            opt.step()
            return loss.item()
        return step, f"PyTorch {torch.__version__} on {torch.cuda.get_device_name(0)}"
    F = torch.nn.functional
    net = torch_mlp(wl, torch, dev)
    opt = torch.optim.SGD(net.parameters(), lr=wl.lr)
    batches = [(torch.tensor(X, dtype=tdt), torch.tensor(y, dtype=torch.int64)) for X, y in wl.mlp_batches()]

    def step(k):
        X, y = (t.to(dev) for t in batches[k % len(batches)])
        opt.zero_grad()
        loss = F.cross_entropy(net(X), y)
        loss.backward()
        opt.step()
        return loss.item()
    return step, f"PyTorch {torch.__version__} on {torch.cuda.get_device_name(0)}"


def time_workload(wl, steps, warmup):
    row = dict(id=wl.id, title=wl.title)
    row["gradc_cuda"] = median_us(gradc_steps(wl, "cuda"), steps, warmup)
    row["gradc_c"] = median_us(gradc_steps(wl, "c"), max(20, steps // 5), 3)
    step, row["torch_note"] = torch_gpu_step(wl)
    row["torch_cuda"] = median_us(step, steps, warmup) if step else None
    return row


def us(v, none="-"):
    return none if v is None else f"{v:.1f} µs"


def machine():
    gpu = "no GPU (emulated)" if os.environ.get("GRADC_CUDA_EMULATE") == "1" else "unknown GPU"
    if shutil.which("nvidia-smi"):
        p = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                           capture_output=True, text=True)
        if p.returncode == 0 and p.stdout.strip():
            gpu = p.stdout.strip().splitlines()[0]
    nv = "nvcc not found"
    if shutil.which("nvcc"):
        p = subprocess.run(["nvcc", "--version"], capture_output=True, text=True)
        nv = p.stdout.strip().splitlines()[-1] if p.stdout.strip() else nv
    return gpu, nv


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    default_data = os.path.join(ROOT, "..", "shared", "workloads")
    ap.add_argument("--data", default=default_data if os.path.isdir(default_data) else None)
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--warmup", type=int, default=30)
    ap.add_argument("--models", default="all", help="comma-separated model ids (default: all)")
    ap.add_argument("--sizes", default="1,33,300", help="batch sizes of the correctness check")
    ap.add_argument("--no-timing", action="store_true")
    args = ap.parse_args(argv)
    t_start = time.perf_counter()
    gpu, nv = machine()
    print(f"gpu_check: {gpu}; {nv}; Python {platform.python_version()}", flush=True)
    sizes = [int(s) for s in args.sizes.split(",")]
    rows = []
    for name, path, model in models():
        if args.models != "all" and name not in args.models.split(","):
            continue
        for dt in ("float64", "float32"):
            r = check_model(name, path, model, dt, sizes)
            rows.append(r)
            print(f"  {name:16s} {dt}: max rel err {r['err']:.2e}, after 20 SGD steps {r['train_err']:.2e}, "
                  f"deterministic {r['deterministic']}, {'ok' if r['ok'] else 'FAILED'} "
                  f"(built in {r['build_s']:.1f} s)", flush=True)
    timing = []
    if not args.no_timing:
        wls = {w.id: w for w in workloads()}
        for wid in ("W3", "W5"):
            wl = wls[wid]
            if args.data:
                load_data(wl, args.data)
            else:
                generate_data(wl)
            timing.append(time_workload(wl, args.steps, args.warmup))
            t = timing[-1]
            print(f"  {wid}: gradc cuda {t['gradc_cuda']:.1f} us, PyTorch cuda {us(t['torch_cuda'])}, "
                  f"gradc C (1 core) {t['gradc_c']:.1f} us", flush=True)
    wall = time.perf_counter() - t_start
    md = report(rows, timing, gpu, nv, wall)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "gpu_check.md"), "w") as f:
        f.write(md)
    print(md)
    return 0 if all(r["ok"] for r in rows) else 1


def report(rows, timing, gpu, nv, wall):
    L = ["# gradc on the GPU: target cuda against target c", "",
         f"{time.strftime('%Y-%m-%d %H:%M')}, {gpu}; {nv}; gradc {gradc.__version__}. Wall time {wall:.0f} s.", "",
         "| model | dtype | max rel. error (loss, grads, outputs) | after 20 SGD steps on the device | "
         "identical bits twice | |", "|---|---|---:|---:|---|---|"]
    for r in rows:
        L.append(f"| {r['name']} | {r['dtype']} | {r['err']:.1e} | {r['train_err']:.1e} | "
                 f"{'yes' if r['deterministic'] else 'NO'} | {'ok' if r['ok'] else '**FAILED**'} |")
    L += ["", f"Tolerance: {TOL['float64']:g} (float64), {TOL['float32']:g} (float32).", ""]
    if timing:
        L += ["## Time per training step (median, float32, SGD; parameters on the device, batch in, loss out)", "",
              "| workload | gradc cuda | PyTorch cuda | gradc / PyTorch | gradc C, 1 CPU core |",
              "|---|---:|---:|---:|---:|"]
        for t in timing:
            tc = t["torch_cuda"]
            ratio = "" if tc is None else f"{t['gradc_cuda'] / tc:.2f}"
            L.append(f"| {t['id']} {t['title']} | {t['gradc_cuda']:.1f} µs | {us(tc, '')} | {ratio} | "
                     f"{t['gradc_c']:.1f} µs |")
        notes = {t["torch_note"] for t in timing if t["torch_note"]}
        L += ["", "PyTorch: " + "; ".join(sorted(notes)) + "." if notes else "", ""]
    return "\n".join(L) + "\n"


if __name__ == "__main__":
    sys.exit(main())
