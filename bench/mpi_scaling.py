#!/usr/bin/env python3
"""Data-parallel training over MPI: training steps per second at 1 and 2 ranks, and the communication.

    python bench/mpi_scaling.py                     # W3 and W5, 1 and 2 ranks
    python bench/mpi_scaling.py --steps 300 --ranks 1,2,3 --workloads w3

| id | model | dtype | global batch | optimizer | data |
|---|---|---|---|---|---|
| W3 | examples/mnist_mlp (784-256-10, ReLU) | float32 | 128 | SGD lr 0.01 | w3_mnist_random.npz |
| W5 | examples/recsys (matrix factorization, rank 32) | float32 | 1024 | SGD lr 0.05 | w5_mf.npz |

One training step is what ``Trainer`` does per batch: forward + backward over the global batch (at N
ranks each rank takes 1/N of it and the gradient sums travel in one ``Allgather``) + the optimizer
update, on the workload's fixed batches (``batches[k % len(batches)]``). At 1 rank the Trainer has no
communicator (plain single-process training); at N > 1 it runs under ``mpiexec -n N`` with
``comm=MPI.COMM_WORLD``. Reported: the median step time over ``--steps`` steps after ``--warmup``,
steps per second (1 / median), the communication time per step (``Comm.comm_seconds`` / steps: the time
spent waiting for the Allgather, which includes waiting for the slower rank), a bare Allgather of
the same buffer for comparison, and the bytes each rank receives per step: (parameters + 1) x 8 bytes
x ranks (the flat float64 gradient sums plus the loss, from every rank). Single-threaded BLAS/OpenMP
in every process. Reads ../shared/workloads/ when it is there, else makes random data of the same
shapes. Absolute figures drift between machines: compare rows within one run.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKLOADS_DIR = os.path.join(os.path.dirname(ROOT), "shared", "workloads")
SINGLE_THREAD = {k: "1" for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}

WORKLOADS = {
    "w3": dict(name="W3", model="examples/mnist_mlp/model.py", file="w3_mnist_random.npz", batch=128, lr=0.01),
    "w5": dict(name="W5", model="examples/recsys/model.py", file="w5_mf.npz", batch=1024, lr=0.05),
}


# ---- data ---------------------------------------------------------------------------------------------

def _random_w3(rng):
    X = rng.random((2048, 784))
    y = rng.integers(0, 10, 2048)
    return dict(X=X, y=y, batches=rng.permutation(2048).reshape(16, 128))


def _random_w5(rng):
    n = 100_000
    return dict(u=rng.integers(0, 1000, n), i=rng.integers(0, 1700, n), r=rng.integers(1, 6, n).astype(float),
                mu=3.5, batches=rng.permutation(n)[:97 * 1024].reshape(97, 1024),
                init_P=rng.normal(0, 0.1, (1000, 32)), init_Q=rng.normal(0, 0.1, (1700, 32)))


def load_workload(key, folder):
    """(data dict for the model, batches, init params or None, source) in float32/int32."""
    import numpy as np
    path = os.path.join(folder, WORKLOADS[key]["file"])
    if os.path.exists(path):
        with np.load(path) as z:
            raw = {k: z[k] for k in z.files}
        source = path
    else:
        raw = (_random_w3 if key == "w3" else _random_w5)(np.random.default_rng(0))
        source = "random data of the same shapes (no " + path + ")"
    f32 = lambda a: np.ascontiguousarray(a, dtype=np.float32)     # noqa: E731
    if key == "w3":
        data = {"x": f32(raw["X"]), "label": raw["y"].astype(np.int32)}
        init = None
        if "init_W1" in raw:   # stored (fan_in, fan_out): the model keeps (fan_out, fan_in)
            init = {"W1": f32(raw["init_W1"].T), "b1": f32(raw["init_b1"]), "W2": f32(raw["init_W2"].T),
                    "b2": f32(raw["init_b2"])}
    else:
        data = {"user": raw["u"].astype(np.int32), "item": raw["i"].astype(np.int32), "rating": f32(raw["r"])}
        init = {"P": f32(raw["init_P"]), "Q": f32(raw["init_Q"]), "mu": f32(np.full((), raw["mu"]))}
        for k in ("bu", "bi"):
            if f"init_{k}" in raw:
                init[k] = f32(raw[f"init_{k}"])
    return data, raw["batches"], init, source


# ---- one measurement (one process, or every rank of an mpiexec job) -------------------------------------

def measure(key, steps, warmup, folder, use_mpi):
    import numpy as np

    import gradc
    from gradc.train import Trainer
    comm = None
    if use_mpi:
        from mpi4py import MPI
        comm = MPI.COMM_WORLD
    w = WORKLOADS[key]
    mod = gradc.compile_model(gradc.load_model_file(os.path.join(ROOT, w["model"])), "float32")
    data, batches, init, source = load_workload(key, folder)
    params = mod.init_params(seed=0)
    for k, v in (init or {}).items():
        params[k][...] = v
    t = Trainer(mod, params, optimizer="sgd", lr=w["lr"], batch_size=w["batch"], seed=0, progress=False, comm=comm)
    batch_list = [{k: v[idx] for k, v in data.items()} for idx in batches]
    d = t.dist
    times, comm_times = [], []
    if comm is not None:
        comm.Barrier()
    for k in range(warmup + steps):
        batch = batch_list[k % len(batch_list)]
        c0 = d.comm_seconds if d else 0.0
        t0 = time.perf_counter()
        loss, grads = t._loss_and_grad(batch)          # what Trainer.train_epoch does per batch
        t.optimizer.step(grads)
        dt = time.perf_counter() - t0
        if k >= warmup:
            times.append(dt)
            comm_times.append((d.comm_seconds - c0) if d else 0.0)
    bare = []
    if d is not None:               # the Allgather alone, on a buffer of the same size
        buf = np.zeros(mod._compiled.n_params + 1)
        comm.Barrier()
        for k in range(warmup + steps):
            t0 = time.perf_counter()
            d.allgather(buf)
            if k >= warmup:
                bare.append(time.perf_counter() - t0)
    ranks = d.size if d else 1
    n_params = mod._compiled.n_params
    return dict(workload=w["name"], ranks=ranks, steps=steps, warmup=warmup, batch=w["batch"],
                n_params=n_params, median_step=statistics.median(times), mean_step=statistics.fmean(times),
                comm_per_step=sum(comm_times) / steps, median_comm=statistics.median(comm_times),
                bare_allgather=statistics.median(bare) if bare else None,
                message_bytes=(n_params + 1) * 8 * ranks if ranks > 1 else 0, final_loss=loss, source=source)


def worker(args):
    res = measure(args.worker, args.steps, args.warmup, args.workloads_dir, use_mpi=args.mpi)
    rank = 0
    if args.mpi:
        from mpi4py import MPI
        rank = MPI.COMM_WORLD.Get_rank()
    if rank == 0:
        with open(args.json, "w") as f:
            json.dump(res, f)


# ---- the driver ---------------------------------------------------------------------------------------------

def find_mpiexec():
    here = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    return here if os.access(here, os.X_OK) else shutil.which("mpiexec")


def run_one(key, ranks, args, tmp):
    out = os.path.join(tmp, f"{key}-{ranks}.json")
    cmd = [os.path.abspath(__file__), "--worker", key, "--json", out, "--steps", str(args.steps),
           "--warmup", str(args.warmup), "--workloads-dir", args.workloads_dir]
    if ranks == 1:
        cmd = [sys.executable, *cmd]
    else:
        cmd = [args.mpiexec, "-n", str(ranks), sys.executable, *cmd, "--mpi"]
    env = dict(os.environ, **SINGLE_THREAD)
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.timeout)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stdout}{p.stderr}")
    with open(out) as f:
        return json.load(f)


def table(rows):
    base = {r["workload"]: r["median_step"] for r in rows if r["ranks"] == 1}
    ms = lambda s: "" if s is None else f"{s * 1e3:.3f}"       # noqa: E731
    lines = ["| workload | ranks | samples/rank | steps/s | median step (ms) | speedup | comm/step (ms) | "
             "comm share | bare Allgather (ms) | received per step |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        sp = base.get(r["workload"])
        speedup = f"{sp / r['median_step']:.2f}x" if sp else ""
        share = f"{100 * r['comm_per_step'] / r['mean_step']:.0f}%" if r["ranks"] > 1 else ""
        msg = f"{r['message_bytes'] / 1e6:.2f} MB" if r["ranks"] > 1 else "-"
        lines.append(f"| {r['workload']} | {r['ranks']} | {r['batch'] // r['ranks']} | {1 / r['median_step']:,.0f} | "
                     f"{ms(r['median_step'])} | {speedup} | {ms(r['comm_per_step']) if r['ranks'] > 1 else '-'} | "
                     f"{share} | {ms(r['bare_allgather']) or '-'} | {msg} |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workloads", default="w3,w5", help="comma-separated: w3, w5 (default %(default)s)")
    ap.add_argument("--ranks", default="1,2", help="comma-separated rank counts (default %(default)s)")
    ap.add_argument("--steps", type=int, default=500, help="timed steps per run (default %(default)s)")
    ap.add_argument("--warmup", type=int, default=30, help="untimed steps first (default %(default)s)")
    ap.add_argument("--workloads-dir", default=WORKLOADS_DIR, help="folder of w3_mnist_random.npz and w5_mf.npz")
    ap.add_argument("--json", help="write the rows (or, with --worker, the one result) here")
    ap.add_argument("--timeout", type=float, default=1200, help="seconds per run")
    ap.add_argument("--worker", choices=sorted(WORKLOADS), help=argparse.SUPPRESS)
    ap.add_argument("--mpi", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return worker(args)
    keys = [k.strip().lower() for k in args.workloads.split(",") if k.strip()]
    ranks = [int(r) for r in args.ranks.split(",")]
    bad = [k for k in keys if k not in WORKLOADS]
    if bad:
        ap.error(f"unknown workload {bad[0]!r}; choose from {', '.join(WORKLOADS)}")
    args.mpiexec = find_mpiexec()
    if any(r > 1 for r in ranks):
        try:
            import mpi4py  # noqa: F401
        except ImportError:
            args.mpiexec = None
        if args.mpiexec is None:
            print("mpi4py or mpiexec is missing: only the 1-rank rows (pip install 'gradc[mpi]')", file=sys.stderr)
            ranks = [r for r in ranks if r == 1]
    # compile once here, so that the ranks find the modules in the cache instead of racing to build them
    import gradc
    for k in keys:
        gradc.compile_model(gradc.load_model_file(os.path.join(ROOT, WORKLOADS[k]["model"])), "float32")
    rows = []
    with tempfile.TemporaryDirectory(prefix="gradc-mpi-bench-") as tmp:
        for k in keys:
            for n in ranks:
                rows.append(run_one(k, n, args, tmp))
                print(f"  {rows[-1]['workload']} at {n} rank(s): median step {rows[-1]['median_step'] * 1e3:.3f} ms",
                      file=sys.stderr, flush=True)
    print(f"{os.cpu_count()} CPUs; {args.steps} timed steps after {args.warmup} of warm-up; float32; SGD; "
          f"one thread per process")
    for k in keys:
        src = next(r["source"] for r in rows if r["workload"] == WORKLOADS[k]["name"])
        print(f"{WORKLOADS[k]['name']} data: {src}")
    print()
    print(table(rows))
    print()
    for r in rows:
        if r["ranks"] == 1:
            print(f"{r['workload']}: {r['n_params']:,} parameters: each rank sends {(r['n_params'] + 1) * 8:,} bytes "
                  f"per step and receives that from every rank ((parameters + 1) x 8 bytes x ranks)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
