"""The fuzz checks: compile a generated model and compare it with finite differences and the oracle.

``check_case(case)`` compiles the model and checks (a) float64 gradients
against finite differences (a 5-point stencil at up to ``MAX_COORDS``
coordinates, retried with tiny central steps near a kink), (b) forward outputs
and the loss against the oracle (oracle.py), (c) on every 5th model (by a hash
of its source) the float32 build against the float64 build.

``run_cases(cases)`` checks a list of cases in forked worker processes
(``default_jobs()``: ``GRADC_FUZZ_JOBS`` or the cores available) and yields
(index, status, message, seconds) as each one finishes.
"""
import multiprocessing
import os
import time
import traceback

import numpy as np

import gradc as gc

from .oracle import draw_values, oracle

FD_RTOL = 1e-5        # float64 gradient vs finite differences
FD_FLOOR = 1e-3       # relative errors against max(|a|, |b|, FLOOR * max(1, largest |b|))
FWD_RTOL = 1e-7       # forward outputs and loss vs the numpy oracle
FWD_FLOOR = 1e-4
F32_RTOL = 1e-3       # float32 build vs float64 build
F32_FLOOR = 1e-2
MAX_COORDS = 30  # gradient coordinates checked per model


def rel_err(got, want, floor):
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    return np.abs(got - want) / np.maximum(np.maximum(np.abs(got), np.abs(want)), floor)


def close(got, want, rtol, floor, what, labels=None):
    got = np.ravel(np.asarray(got, dtype=np.float64))
    want = np.ravel(np.asarray(want, dtype=np.float64))
    assert got.shape == want.shape, f"{what}: shape {got.shape} vs {want.shape}"
    assert np.all(np.isfinite(got)), f"{what}: non-finite values {got}"
    assert np.all(np.isfinite(want)), f"{what}: the reference is not finite: {want}"
    fl = floor * max(1.0, float(np.abs(want).max(initial=0.0)))
    err = rel_err(got, want, fl)
    bad = np.flatnonzero(~(err <= rtol))
    if bad.size:
        rows = "\n".join(f"  {labels[i] if labels else i}: got {got[i]: .12e} want {want[i]: .12e} rel {err[i]:.2e}"
                         for i in bad[np.argsort(-err[bad])][:8])
        raise AssertionError(f"{what}: {bad.size} of {got.size} values differ by more than {rtol:g} "
                             f"(floor {fl:.3g}):\n{rows}")


def coords_of(params, rng, limit=MAX_COORDS):
    allc = [(n, idx) for n, v in params.items() for idx in np.ndindex(*np.shape(v))]
    if len(allc) <= limit:
        return allc
    pick = sorted(rng.choice(len(allc), size=limit, replace=False))
    return [allc[i] for i in pick]


def finite_differences(mod, params, data, coords, stencil, h):
    p = {k: np.array(v, dtype=np.float64, copy=True) for k, v in params.items()}
    out = np.empty(len(coords))
    for n, (name, idx) in enumerate(coords):
        x0 = float(p[name][idx])
        step = h * max(1.0, abs(x0))

        def f(t):
            p[name][idx] = x0 + t * step
            return mod.loss(p, **data)
        if stencil == 5:
            out[n] = (-f(2) + 8 * f(1) - 8 * f(-1) + f(-2)) / (12 * step)
        else:
            out[n] = (f(1) - f(-1)) / (2 * step)
        p[name][idx] = x0
    return out


def check_gradient(mod, params, data, rng, what):
    L, g = mod.loss_and_grad(params, **data)
    coords = coords_of(params, rng)
    got = np.array([float(g[n][i]) for n, i in coords])
    fd = finite_differences(mod, params, data, coords, 5, 1e-4)
    fl = FD_FLOOR * max(1.0, float(np.abs(fd).max(initial=0.0)))
    bad = np.flatnonzero(~(rel_err(got, fd, fl) <= FD_RTOL))
    if bad.size:
        # a kink or a Piecewise boundary within 2e-4 of the point: retry with tiny central steps
        sub = [coords[i] for i in bad]
        fd6 = finite_differences(mod, params, data, sub, 3, 1e-6)
        fd7 = finite_differences(mod, params, data, sub, 3, 1e-7)
        still = [i for i, a, b in zip(bad, fd6, fd7)
                 if not (rel_err(got[i], a, fl) <= 1e-4 or rel_err(got[i], b, fl) <= 1e-3)]
        if still:
            rows = "\n".join(f"  {coords[i][0]}{list(coords[i][1])}: got {got[i]: .12e}  fd {fd[i]: .12e}  "
                             f"rel {rel_err(got[i], fd[i], fl):.2e}" for i in still[:8])
            raise AssertionError(f"{what}: float64 gradient vs finite differences: {len(still)} of {len(coords)} "
                                 f"sampled coordinates differ by more than {FD_RTOL:g} (floor {fl:.3g}):\n{rows}")
    return L, g


def check_case(case, f32=None):
    """Compile ``case`` and run checks (a), (b) and, when ``f32`` (default: every 5th model), (c)."""
    m = case.build()
    mod = gc.compile_model(m, dtype="float64")
    rng = np.random.default_rng(case.seed)
    params, inputs, targets = draw_values(case, rng)
    data = {**inputs, **targets}

    # (b) forward outputs and the loss against the oracle
    want_loss, want_out = oracle(case, params, data)
    out = mod.forward(params, **inputs)
    assert set(out) == {n for n, _ in case.outputs}, f"outputs {sorted(out)} vs {[n for n, _ in case.outputs]}"
    for name, want in want_out.items():
        close(out[name], want, FWD_RTOL, FWD_FLOOR, f"forward output {name!r} vs the oracle")
    L = mod.loss(params, **data)
    close(L, want_loss, FWD_RTOL, FWD_FLOOR, "loss vs the oracle")

    # (a) gradient against finite differences
    L2, g = check_gradient(mod, params, data, rng, "f64")
    close(L2, L, 1e-12, 1e-12, "loss_and_grad's loss vs loss")

    # (c) float32 against float64 at the same float32-rounded numbers
    if f32 is None:
        f32 = case.crc % 5 == 0
    if f32:
        mod32 = gc.compile_model(m, dtype="float32")
        r32 = lambda d: {k: (np.asarray(v).astype(np.float32) if np.asarray(v).dtype.kind == "f" else v)  # noqa: E731
                         for k, v in d.items()}
        p32, d32 = r32(params), r32(data)
        up = lambda d: {k: (v.astype(np.float64) if v.dtype == np.float32 else v) for k, v in d.items()}  # noqa: E731
        L64, g64 = mod.loss_and_grad(up(p32), **up(d32))
        L32, g32 = mod32.loss_and_grad(p32, **d32)
        close(L32, L64, F32_RTOL, F32_FLOOR, "float32 loss vs float64 loss")
        names = [f"{n}{list(i)}" for n, v in g64.items() for i in np.ndindex(*np.shape(v))]
        close(np.concatenate([np.ravel(g32[n]) for n in g64]), np.concatenate([np.ravel(g64[n]) for n in g64]),
              F32_RTOL, F32_FLOOR, "float32 gradient vs float64 gradient", names)
    return True


# ---- many cases in parallel ------------------------------------------------------
_POOL_CASES = []      # the cases of the current run_cases, read by the forked workers


def _check_one(i):
    case = _POOL_CASES[i]
    t = time.perf_counter()
    try:
        check_case(case)
        return i, "passed", "", time.perf_counter() - t
    except gc.ModelError as e:
        if "depends on no parameter" in str(e):       # the loss cancelled out: not a well-formed model
            return i, "skipped", str(e), time.perf_counter() - t
        return i, "failed", "".join(traceback.format_exception(e)), time.perf_counter() - t
    except Exception as e:  # noqa: BLE001 (every error of a well-formed model is a finding)
        return i, "failed", "".join(traceback.format_exception(e)), time.perf_counter() - t


def default_jobs():
    env = os.environ.get("GRADC_FUZZ_JOBS")
    if env:
        return max(1, int(env))
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def run_cases(cases, jobs=None):
    """Check every case (in ``jobs`` forked processes); yields (index, status, message, seconds) as they finish."""
    _POOL_CASES[:] = cases
    jobs = default_jobs() if jobs is None else jobs
    if jobs <= 1 or len(cases) <= 1 or "fork" not in multiprocessing.get_all_start_methods():
        for i in range(len(cases)):
            yield _check_one(i)
        return
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(jobs, maxtasksperchild=50) as pool:
        yield from pool.imap_unordered(_check_one, range(len(cases)))
