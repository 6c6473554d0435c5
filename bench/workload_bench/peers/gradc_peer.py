"""gradc: the fused ``opt.train_step`` of the compiled model, and the pieces of a step timed apart."""
import os
import shutil
import tempfile
import time

import numpy as np

from ..timing import Runner


_GRADC_IMPORTED = False


def _preimport_gradc():
    """Import what a compile needs and compile one tiny model, so that the cold compile of each
    workload measures gradc's own work, not Python imports done once per process."""
    global _GRADC_IMPORTED
    if _GRADC_IMPORTED:
        return
    import gradc
    import gradc.api  # noqa: F401
    import gradc.autodiff  # noqa: F401
    import gradc.build  # noqa: F401
    import gradc.codegen.c  # noqa: F401
    import gradc.optim  # noqa: F401
    import gradc.runtime  # noqa: F401
    import sympy as sp
    d = tempfile.mkdtemp(prefix="gradc-bench-warm-")
    old = os.environ.get("GRADC_CACHE_DIR")
    os.environ["GRADC_CACHE_DIR"] = d
    try:
        m = gradc.Model("bench_warmup")
        a, x = m.param("a"), m.input("x")
        m.loss(sp.exp(a * x))
        gradc.compile_model(m, "float32")
    finally:
        _restore_env("GRADC_CACHE_DIR", old)
        shutil.rmtree(d, ignore_errors=True)
    _GRADC_IMPORTED = True


def _restore_env(key, old):
    if old is None:
        os.environ.pop(key, None)
    else:
        os.environ[key] = old


def _param(wl, name, v):
    """A parameter of the workload file in gradc's model layout: the dense layers are (fan_out, fan_in)
    in the models, (fan_in, fan_out) in the files; W6's W3 takes the 16x4x4 map as (120, 16, 4, 4)."""
    if wl.kind == "cnn" and name == "W3":
        return v.T.reshape(120, 16, 4, 4)
    return v.T if wl.kind in ("mlp", "cnn") and v.ndim == 2 else v


def build_gradc(wl, cache_dirs, dtype=None, parts=True, cache=None):
    """gradc's runner; ``dtype`` (default the workload's) and ``parts=False`` serve the float64
    reference check, which needs the step only. ``cache``: a ``GRADC_CACHE_DIR`` to use (and keep)
    instead of a fresh one, so that several runners of one model file share a compile
    (bench/scaling.py's batch sweeps); then ``compile_s`` is cold only for the first."""
    import gradc
    from gradc import optim
    _preimport_gradc()
    dtype = dtype or wl.dtype
    if cache is None:
        cache = tempfile.mkdtemp(prefix=f"gradc-bench-{wl.id}-")
        cache_dirs.append(cache)
    old = os.environ.get("GRADC_CACHE_DIR")
    os.environ["GRADC_CACHE_DIR"] = cache
    try:
        t0 = time.perf_counter()
        mod = gradc.load(wl.model, dtype=dtype)
        cold = time.perf_counter() - t0
        t0 = time.perf_counter()
        gradc.load(wl.model, dtype=dtype)
        warm = time.perf_counter() - t0
    finally:
        _restore_env("GRADC_CACHE_DIR", old)
    dt = np.dtype(dtype)
    p = mod.init_params(seed=0)
    init = wl.init
    for name in p:
        p[name] = np.ascontiguousarray(_param(wl, name, init[name]), dt)
    opt = optim.Adam(p, lr=wl.lr) if wl.optimizer == "adam" else optim.SGD(p, lr=wl.lr)
    nm = wl.names
    if wl.kind in ("mlp", "cnn"):
        ydt = np.int32 if wl.head == "ce" else dt
        batches = [{nm["x"]: np.ascontiguousarray(X, dt), nm["y"]: np.ascontiguousarray(y, ydt)}
                   for X, y in wl.mlp_batches()]
    else:
        mu = float(wl.data["mu"])
        batches = [{nm["u"]: u.astype(np.int32), nm["i"]: i.astype(np.int32),
                    nm["mu"]: np.full(len(u), mu, dt), nm["r"]: r.astype(dt)} for u, i, r in wl.mf_batches()]
    nb, lg = len(batches), mod.loss_and_grad
    train = opt.train_step        # one fused C call for plain SGD and Adam (optim.Optimizer.train_step)
    if wl.id == "W1":
        lrs = opt.lr

        def step(k):
            lr = wl.lr_at(k)
            for n in lrs:
                lrs[n] = lr
            return train(mod, **batches[k % nb])
    else:
        def step(k):
            return train(mod, **batches[k % nb])
    if not parts:
        return Runner("gradc", step, compile_s=cold, warm_s=warm, dtype=dtype)
    parts = {"step": lambda: step(0), "loss_and_grad": lambda: lg(p, **batches[0])}
    g0 = lg(p, **batches[0])[1]
    parts["opt.step"] = lambda: opt.step(g0)
    kernel = _raw_kernel(mod, p, batches[0])
    if kernel is not None:
        parts["C kernel"] = kernel
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if cores >= 2 and hasattr(mod, "set_threads"):      # not when pinned to one core
        # the same step with the batch split over two threads (a second module object: its own setting)
        old = os.environ.get("GRADC_CACHE_DIR")
        os.environ["GRADC_CACHE_DIR"] = cache
        try:
            mod2 = gradc.load(wl.model, dtype=dtype)
        finally:
            _restore_env("GRADC_CACHE_DIR", old)
        mod2.set_threads(2)
        p2 = p.copy()
        opt2 = optim.Adam(p2, lr=wl.lr) if wl.optimizer == "adam" else optim.SGD(p2, lr=wl.lr)
        parts["step, 2 threads"] = lambda: opt2.train_step(mod2, **batches[0])
    return Runner("gradc", step, compile_s=cold, warm_s=warm, dtype=dtype, parts=parts)


def _raw_kernel(mod, p, batch):
    """The generated C function alone, called through cffi with buffers prepared once (no argument
    checks, no allocation). Reaches into gradc.runtime's internals: None when they have changed."""
    try:
        c = mod._compiled
        arrays = [batch[a["name"]] for a in c.meta["inputs"] + c.meta["targets"]]
        n = len(arrays[0])
        out, g = np.empty(1, c.dtype), np.empty(c.n_params, c.dtype)
        args = [n, c._ptr(p.flat), *[c._ptr(a) for a in arrays], c._ptr(out), c._ptr(g), c._work()]
        fn = c._lg
        if fn(*args) != 0:
            return None
        return lambda: fn(*args)
    except Exception:
        return None
